"""Results on a real S3 endpoint over HTTP (moto's server, on 127.0.0.1, with IAM authentication on).

The farm runs through its CLI in subprocesses (embedded Ray, tiny model), exactly as a user
runs it; the test talks to the same endpoint with boto3 to inspect objects and ETags.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from conftest import subprocess_env
from farm.storage.commit import commit_item
from farm.storage.config import StorageConfig
from farm.storage.s3 import S3Store
from helpers import FAST, MotoServer, encode, noise, pattern, write_manifest

pytestmark = pytest.mark.integration

BUCKET = "renders"


@dataclass
class S3:
    endpoint: str
    key_id: str
    secret: str
    server: MotoServer

    def client(self, **kwargs):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=kwargs.get("key_id", self.key_id),
            aws_secret_access_key=kwargs.get("secret", self.secret),
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=10),
        )

    def env(self, **extra) -> dict:
        values = {
            "FARM_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        values.update(extra)
        return subprocess_env(**values)

    def objects(self, prefix: str) -> dict[str, tuple[str, object]]:
        """key -> (etag, last modified) under `prefix`."""
        found = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for entry in page.get("Contents", []):
                found[entry["Key"]] = (entry["ETag"], entry["LastModified"])
        return found

    def restart(self, pause_s: float) -> None:
        self.server.restart(pause_s)


@pytest.fixture(scope="module")
def s3(farm_cache, tiny_model_dir):
    """moto in server mode on 127.0.0.1; IAM user `farm` with S3 access; authentication enforced."""
    import moto.settings

    server = MotoServer().start()
    endpoint = server.endpoint
    bootstrap = dict(endpoint_url=endpoint, aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap", region_name="us-east-1")
    iam = boto3.client("iam", **bootstrap)
    iam.create_user(UserName="farm")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="farm", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="farm")["AccessKey"]
    env = S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], server)
    client = env.client()
    client.create_bucket(Bucket=BUCKET)
    client.create_bucket(Bucket="inputs")
    previous = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on, requests must be signed by a real key
    yield env
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = previous
    env.server.stop()


def farm(s3: S3, *args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "farm", *args], capture_output=True, text=True, env=env or s3.env(), timeout=timeout
    )


def manifest(tmp_path: Path, s3: S3, count: int, *, name: str, remote_first: bool = True) -> Path:
    (tmp_path / "local.png").write_bytes(encode(pattern(320, 240), "PNG"))
    s3.client().put_object(Bucket="inputs", Key="photos/remote.jpg", Body=encode(pattern(300, 300), "JPEG"))
    items = []
    for n in range(count):
        image = "s3://inputs/photos/remote.jpg" if remote_first and n == 0 else "local.png"
        items.append({"id": f"shot-{n:02d}", "image": image, "prompt": f"motion {n}"})
    return write_manifest(tmp_path, items, name=name)


def item_objects(objects: dict, prefix: str) -> dict:
    return {k: v for k, v in objects.items() if k.rsplit("/", 1)[-1] not in ("job.json", "spec.json") and "/manifest." not in k}


def test_run_to_s3_stores_every_object_and_an_immediate_rerun_changes_nothing(tmp_path, s3):
    path = manifest(tmp_path, s3, 3, name="layout")
    first = farm(s3, "run", str(path), "--output", f"s3://{BUCKET}/studio")
    assert first.returncode == 0, first.stderr[-3000:]
    objects = s3.objects("studio/layout/")
    expected = {f"studio/layout/shot-{n:02d}.{ext}" for n in range(3) for ext in ("mp4", "jpg", "json")}
    assert expected | {"studio/layout/job.json", "studio/layout/spec.json", "studio/layout/manifest.yaml"} == set(objects)
    sidecar = json.loads(s3.client().get_object(Bucket=BUCKET, Key="studio/layout/shot-00.json")["Body"].read())
    assert sidecar["image"] == "s3://inputs/photos/remote.jpg" and sidecar["input"]["format"] == "JPEG"
    assert len(sidecar["inputs_sha256"]) == 64 and sidecar["commit"]["token"]
    record = json.loads(s3.client().get_object(Bucket=BUCKET, Key="studio/layout/job.json")["Body"].read())
    assert record["state"] == "succeeded" and record["counts"]["succeeded"] == 3
    assert s3.key_id not in json.dumps(record) + json.dumps(sidecar) and s3.secret not in first.stdout + first.stderr
    video = s3.client().get_object(Bucket=BUCKET, Key="studio/layout/shot-01.mp4")
    assert video["ContentType"] == "video/mp4"

    again = farm(s3, "run", str(path), "--output", f"s3://{BUCKET}/studio")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rendered 0 new, 3 already committed, 0 failed" in again.stdout
    assert s3.objects("studio/layout/") == objects, "an identical re-run must change no object"


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_a_changed_item_is_rendered_again_and_replaces_only_itself(tmp_path, s3):
    path = manifest(tmp_path, s3, 2, name="change", remote_first=False)
    assert farm(s3, "run", str(path), "--output", f"s3://{BUCKET}/studio").returncode == 0
    before = s3.objects("studio/change/")
    document = json.loads(json.dumps(__import__("yaml").safe_load(path.read_text())))
    document["items"][1]["prompt"] = "a different motion"
    path.write_text(json.dumps(document))
    path = path.rename(path.with_suffix(".json"))
    result = farm(s3, "run", str(path), "--output", f"s3://{BUCKET}/studio")
    assert result.returncode == 0, result.stderr[-3000:]
    after = s3.objects("studio/change/")
    assert all(after[k] == before[k] for k in before if "shot-00" in k)
    assert all(after[k] != before[k] for k in before if "shot-01" in k)


@pytest.mark.slow  # over a minute, or repeated by tests/chaos: `python3 dev.py test -m slow`
def test_a_killed_run_resumes_and_leaves_committed_items_untouched(tmp_path, s3):
    path = manifest(tmp_path, s3, 8, name="resume", remote_first=False)
    run = subprocess.Popen(
        [sys.executable, "-m", "farm", "run", str(path), "--output", f"s3://{BUCKET}/studio"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s3.env(),
    )
    deadline = time.time() + 300
    committed = {}
    while time.time() < deadline:
        committed = {k: v for k, v in s3.objects("studio/resume/").items() if k.endswith(".json") and "shot-" in k}
        if len(committed) >= 3:
            break
        time.sleep(0.5)
    run.send_signal(signal.SIGINT)
    try:
        run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
    assert 3 <= len(committed) < 8, "the run was stopped midway"
    interrupted = s3.objects("studio/resume/")
    done_before = {k: v for k, v in interrupted.items() if "shot-" in k and "/.staging/" not in k}

    result = farm(s3, "resume", f"s3://{BUCKET}/studio/resume")
    assert result.returncode == 0, result.stderr[-3000:]
    final = s3.objects("studio/resume/")
    for key, value in done_before.items():
        stem = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if f"studio/resume/{stem}.json" in done_before:  # committed before the interruption
            assert final[key] == value, f"{key} changed on resume"
    sidecars = {k for k in final if k.endswith(".json") and "shot-" in k}
    assert sidecars == {f"studio/resume/shot-{n:02d}.json" for n in range(8)}
    assert not [k for k in final if "/.staging/" in k]
    for key in sidecars:  # each committed result is whole and consistent
        sidecar = json.loads(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())
        head = s3.client().head_object(Bucket=BUCKET, Key=key.replace(".json", ".mp4"))
        assert head["ContentLength"] == sidecar["outputs"]["bytes"]["video"]
    record = json.loads(s3.client().get_object(Bucket=BUCKET, Key="studio/resume/job.json")["Body"].read())
    assert record["state"] == "succeeded"
    assert record["counts"]["skipped"] + record["counts"]["succeeded"] == 8 and record["counts"]["skipped"] >= 3


@pytest.mark.slow  # over a minute, or repeated by tests/chaos: `python3 dev.py test -m slow`
def test_a_30_second_storage_outage_mid_job_loses_nothing(tmp_path, s3):
    path = manifest(tmp_path, s3, 8, name="outage", remote_first=False)
    run = subprocess.Popen(
        [sys.executable, "-m", "farm", "run", str(path), "--output", f"s3://{BUCKET}/studio"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s3.env(FARM_S3_RETRY_WINDOW_S="240"),
    )
    deadline = time.time() + 300
    committed_before = 0
    while time.time() < deadline and not committed_before:
        committed_before = sum(k.endswith(".json") and "shot-" in k for k in s3.objects("studio/outage/"))
        time.sleep(0.5)
    s3.restart(pause_s=30)  # the endpoint refuses connections for 30 s
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert 1 <= committed_before < 8, "the outage hit the middle of the job"
    objects = s3.objects("studio/outage/")
    for n in range(8):
        for ext in ("mp4", "jpg", "json"):
            assert f"studio/outage/shot-{n:02d}.{ext}" in objects
    record = json.loads(s3.client().get_object(Bucket=BUCKET, Key="studio/outage/job.json")["Body"].read())
    assert record["counts"]["succeeded"] == 8 and record["state"] == "succeeded"


def test_bad_credentials_stop_the_job_before_any_render(tmp_path, s3):
    path = manifest(tmp_path, s3, 1, name="creds", remote_first=False)
    started = time.time()
    result = farm(s3, "run", str(path), "--output", f"s3://{BUCKET}/studio", env=s3.env(AWS_SECRET_ACCESS_KEY="wrong"))
    assert result.returncode == 3
    assert "not usable" in result.stderr and "secret key does not match" in result.stderr
    assert "wrong" not in result.stderr and "Traceback" not in result.stderr
    assert time.time() - started < 60 and not s3.objects("studio/creds/")


def test_a_missing_bucket_stops_the_job_before_any_render(tmp_path, s3):
    path = manifest(tmp_path, s3, 1, name="nobucket", remote_first=False)
    result = farm(s3, "run", str(path), "--output", "s3://no-such-bucket/x")
    assert result.returncode == 3
    assert "no-such-bucket" in result.stderr and "does not exist" in result.stderr


def test_two_racing_commits_of_one_item_have_one_winner(tmp_path, s3, monkeypatch):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(f"s3://{BUCKET}/race", StorageConfig())
    files = {}
    for who in ("a", "b"):
        (tmp_path / f"{who}.mp4").write_bytes(who.encode() * 1000)
        (tmp_path / f"{who}.jpg").write_bytes(who.encode() * 10)
        files[who] = {"video": str(tmp_path / f"{who}.mp4"), "thumbnail": str(tmp_path / f"{who}.jpg")}
    first = commit_item(store, "job", "item", files["a"], {"status": "succeeded", "who": "a"}, token="tok-a")
    second = commit_item(store, "job", "item", files["b"], {"status": "succeeded", "who": "b"}, token="tok-b")
    assert first.committed and not second.committed
    assert json.loads(store.get_bytes("job/item.json"))["who"] == "a"
    assert store.get_bytes("job/item.mp4") == b"a" * 1000
    assert not list(store.list("job/.staging/"))
    replaced = commit_item(store, "job", "item", files["b"], {"status": "succeeded", "who": "b"}, token="tok-c",
                           replace_etag=first.sidecar.etag)
    assert replaced.committed and store.get_bytes("job/item.mp4") == b"b" * 1000
    stale = commit_item(store, "job", "item", files["a"], {"status": "succeeded"}, token="tok-d", replace_etag=first.sidecar.etag)
    assert not stale.committed, "a replace based on an old version must lose"


def test_a_commit_costs_seven_requests_and_keeps_each_object_intact(tmp_path, s3, monkeypatch):
    """Two staging PUTs, the conditional sidecar PUT, then per output one CopyObject and one
    DELETE: no HEADs. The ETags and sizes it reports are the server's."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(f"s3://{BUCKET}/lean", StorageConfig())
    sent = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: sent.append((request.method, request.url)))
    video, thumb = tmp_path / "v.mp4", tmp_path / "t.jpg"
    video.write_bytes(os.urandom(300_000))
    thumb.write_bytes(os.urandom(20_000))
    result = commit_item(store, "job", "item", {"video": str(video), "thumbnail": str(thumb)}, {"status": "succeeded"}, token="t1")
    assert result.committed
    assert [method for method, _ in sent] == ["PUT", "PUT", "PUT", "PUT", "DELETE", "PUT", "DELETE"], sent
    client = s3.client()
    for name, key, path, content_type in (("video", "lean/job/item.mp4", video, "video/mp4"), ("thumbnail", "lean/job/item.jpg", thumb, "image/jpeg")):
        head = client.head_object(Bucket=BUCKET, Key=key)
        assert head["ETag"].strip('"') == result.outputs[name].etag and head["ContentLength"] == result.outputs[name].size
        assert head["ContentType"] == content_type
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == path.read_bytes()
    assert not list(store.list("job/.staging/"))


def committed_sidecar(spec, item) -> dict:
    """A succeeded sidecar whose recorded inputs match `item` now (what resume compares)."""
    import hashlib

    from farm.core.job import inputs_digest
    from farm.storage.inputs import local_fingerprint

    image_sha256 = hashlib.sha256(Path(item.image).read_bytes()).hexdigest()
    digest = inputs_digest(image_sha256=image_sha256, prompt=item.prompt, params=item.params.model_dump(),
                           seed=item.seed, model=spec.model, model_config_sha256="x")
    return {"status": "succeeded", "input": {"sha256": image_sha256, "fingerprint": local_fingerprint(item.image)},
            "inputs_sha256": digest}


def test_a_rerun_proves_s3_outputs_by_etag_and_downloads_only_what_the_etag_cannot_prove(tmp_path, s3, monkeypatch):
    """i0 intact (ETag = recorded md5: no download); i1's video overwritten in place with other
    bytes of the same size (damaged, found by its sha256); i2's video re-uploaded unchanged as a
    multipart object (an ETag that is no md5, like SSE-KMS: downloaded, found intact)."""
    from farm.core.manifest import parse_manifest
    from farm.storage.resume import scan_committed

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "a.png").write_bytes(encode(pattern(64, 48), "PNG"))
    items = [{"id": f"i{n}", "image": "a.png", "prompt": f"p{n}"} for n in range(3)]
    document = {"version": 1, "name": "job", "model": "tiny", "items": items}
    spec = parse_manifest(json.dumps(document).encode(), "json", base_dir=tmp_path)
    store = S3Store(f"s3://{BUCKET}/verify", StorageConfig())
    committed = {}
    for item in spec.items:
        video, thumb = tmp_path / f"{item.id}.mp4", tmp_path / f"{item.id}.jpg"
        video.write_bytes(os.urandom(200_000))
        thumb.write_bytes(os.urandom(5_000))
        committed[item.id] = commit_item(store, "job", item.id, {"video": str(video), "thumbnail": str(thumb)},
                                         committed_sidecar(spec, item), token=f"t-{item.id}")
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="verify/job/i1.mp4", Body=os.urandom(200_000))
    upload = client.create_multipart_upload(Bucket=BUCKET, Key="verify/job/i2.mp4")["UploadId"]
    part = client.upload_part(Bucket=BUCKET, Key="verify/job/i2.mp4", UploadId=upload, PartNumber=1,
                              Body=(tmp_path / "i2.mp4").read_bytes())
    client.complete_multipart_upload(Bucket=BUCKET, Key="verify/job/i2.mp4", UploadId=upload,
                                     MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    assert client.head_object(Bucket=BUCKET, Key="verify/job/i2.mp4")["ETag"].strip('"').endswith("-1")

    downloads = []
    store.client.meta.events.register(
        "before-send.s3",
        lambda request, **_: downloads.append(request.url.split("?")[0].rsplit("/verify/", 1)[-1])
        if request.method == "GET" and request.url.split("?")[0].endswith((".mp4", ".jpg")) else None,
    )
    decision = scan_committed(store, spec, model_config_sha256="x")
    assert set(decision.skip) == {"i0", "i2"}
    assert decision.replace == {"i1": committed["i1"].sidecar.etag}
    assert decision.damaged == {"i1": "video sha256 differs from the sidecar's"}
    assert sorted(downloads) == ["job/i1.mp4", "job/i2.mp4"], "outputs whose ETag is the md5 are not downloaded"


def test_presigned_urls_download_the_video(tmp_path, s3, monkeypatch):
    for name, value in s3.env(FARM_S3_PRESIGN_EXPIRY_S="120").items():
        monkeypatch.setenv(name, value)
    store = S3Store(f"s3://{BUCKET}/presign", StorageConfig())
    payload = encode(noise(32, 32), "PNG")
    store.put_bytes("clip.mp4", payload, "video/mp4")
    url = store.presigned_url("clip.mp4")
    assert url.startswith(f"{s3.endpoint}/{BUCKET}/presign/clip.mp4?") and "X-Amz-Expires=120" in url
    import moto.settings

    # moto's authentication check cannot read query-string signatures (it wants an Authorization
    # header), so it is off for this one download; the URL is boto3's own presigned URL.
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == payload


def test_request_checksums_can_be_limited_for_picky_servers(s3, monkeypatch):
    for name, value in s3.env(FARM_S3_CHECKSUMS="when_required").items():
        monkeypatch.setenv(name, value)
    store = S3Store(f"s3://{BUCKET}/checksums", StorageConfig())
    assert store.client.meta.config.request_checksum_calculation == "when_required"
    store.put_bytes("a.bin", b"x" * 10)
    assert store.get_bytes("a.bin") == b"x" * 10


def test_hostile_item_ids_become_safe_object_keys(tmp_path, s3):
    (tmp_path / "a.png").write_bytes(encode(pattern(64, 64), "PNG"))
    items = [
        {"id": "../../escape", "image": "a.png", "prompt": "p"},
        {"id": "/abs/olute", "image": "a.png", "prompt": "p"},
        {"id": "ctrl\u0007char", "image": "a.png", "prompt": "p"},
        {"id": "x" * 250, "image": "a.png", "prompt": "p"},
    ]
    path = write_manifest(tmp_path, items, name="hostile")
    result = farm(s3, "run", str(path), "--output", f"s3://{BUCKET}/studio")
    assert result.returncode == 0, result.stderr[-3000:]
    keys = [k for k in s3.objects("studio/hostile/") if k.endswith(".mp4")]
    assert len(keys) == 4
    for key in keys:
        name = key[len("studio/hostile/") :]
        assert "/" not in name and ".." not in name and not name.startswith(".") and len(name) <= 104
        assert all(32 < ord(c) < 127 for c in name)
    assert FAST["frames"] == 8


def test_large_files_go_up_in_parts(tmp_path, s3, monkeypatch):
    for name, value in s3.env(FARM_S3_MULTIPART_THRESHOLD_BYTES=str(5 * 2**20), FARM_S3_MULTIPART_CHUNK_BYTES=str(5 * 2**20)).items():
        monkeypatch.setenv(name, value)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(12 * 2**20))
    store = S3Store(f"s3://{BUCKET}/multipart", StorageConfig())
    info = store.put_file("big.mp4", str(big), "video/mp4")
    assert info.size == 12 * 2**20 and info.etag.endswith("-3"), info  # a 3-part multipart ETag
    assert store.get_bytes("big.mp4") == big.read_bytes()
    promoted = store.promote("big.mp4", "moved.mp4")
    assert promoted.size == info.size and store.head("big.mp4") is None
