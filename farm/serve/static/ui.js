// farm's web UI: the little that is not htmx. Takes play in sync: "Play together" starts every
// take from 0, and while they play the others follow the first (a drift over 0.15 s is
// corrected). No inline scripts anywhere: the pages' Content-Security-Policy forbids them.
(function () {
  "use strict";

  function takeVideos() {
    return Array.prototype.slice.call(document.querySelectorAll("video.take-video"));
  }

  function playTogether() {
    var videos = takeVideos();
    videos.forEach(function (v) { v.currentTime = 0; });
    videos.forEach(function (v) { v.play().catch(function () {}); });
  }

  function follow(event) {
    var videos = takeVideos();
    if (!videos.length || event.target !== videos[0]) return;
    var t = videos[0].currentTime;
    videos.slice(1).forEach(function (v) {
      if (!v.paused && Math.abs(v.currentTime - t) > 0.15) v.currentTime = t;
    });
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) return;
    if (target.closest("#play-all")) playTogether();
    if (target.closest("#pause-all")) takeVideos().forEach(function (v) { v.pause(); });
  });
  document.addEventListener("timeupdate", follow, true);  // media events do not bubble: capture

  // The clicked grid card is marked, so one sees which item the panel shows.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var card = event.target instanceof Element ? event.target.closest(".card") : null;
    if (!card) return;
    document.querySelectorAll(".card.selected").forEach(function (c) { c.classList.remove("selected"); });
    card.classList.add("selected");
  });
})();
