"""farm.runtime.connect without Ray: what `auto` stands for, the connect bounds, the embedded
cluster's private token, and the messages for what Ray raises (the texts are Ray 2.60's)."""

from __future__ import annotations

import pytest

from farm.core.errors import ClusterUnavailableError, FarmError
from farm.runtime import connect

AT = "10.0.0.5:6379"
# What ray.init raised, as error_text() renders the chain (Ray's own words).
INVALID_TOKEN = (
    "ConnectionError: Failed to connect to Ray cluster at 10.0.0.5:6379\n"
    "RuntimeError: Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
    '  File "python/ray/includes/common.pxi", line 146, in ray._raylet.check_status\n'
    "ray.exceptions.RpcError: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
)
NO_TOKEN = "AuthenticationError: Token authentication is enabled but no authentication token was found"
VERSION = ("RuntimeError: Version mismatch: The cluster was started with:\n    Ray: 2.59.0\n"
           "This process on node 10.0.0.9 was started with:\n    Ray: 2.60.0")
NO_NODE = ("RuntimeError: No node info found matching attributes: '10.0.0.9' when trying to resolve node to "
           "connect to.")
TIMED_OUT = "ray.exceptions.RpcError: Timed out while waiting for GCS to become available."


@pytest.mark.parametrize("text", [INVALID_TOKEN, NO_TOKEN], ids=["invalid", "missing"])
def test_an_auth_failure_names_the_address_and_the_token_settings(text):
    message = connect.join_failure_message(AT, AT, text, "2.60.0")
    assert message.startswith(f"cannot join the Ray cluster at {AT}:")
    for needle in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token",
                   "ray get-auth-token"):
        assert needle in message
    assert "Traceback" not in message and "pxi" not in message


def test_other_failures_say_what_went_wrong_and_what_to_check():
    version = connect.join_failure_message(AT, AT, VERSION, "2.60.0")
    assert "another Ray or Python version" in version and "2.60.0" in version
    node = connect.join_failure_message(AT, AT, NO_NODE, "2.60.0")
    assert "runs no Ray node of that cluster" in node and "--address auto" in node
    other = connect.join_failure_message(AT, AT, TIMED_OUT, "2.60.0")
    assert other.startswith(f"cannot join the Ray cluster at {AT}: ray.exceptions.RpcError: Timed out")
    for needle in ("ray start --head", "6379", "firewall", "Ray version (2.60.0 here)"):
        assert needle in other
    unreachable = connect.unreachable_message("127.0.0.1:6379", "192.0.2.7:6379", "Connection refused", 60, "2.60.0")
    assert "127.0.0.1:6379 (Ray dials it as 192.0.2.7:6379)" in unreachable
    assert "within 60 s (Connection refused)" in unreachable and "FARM_RAY_CONNECT_TIMEOUT_S" in unreachable


def test_error_text_follows_the_chain_ray_wraps_the_cause_in():
    try:
        try:
            raise RuntimeError("InvalidAuthToken: Authentication token is missing or incorrect")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at x") from inner
    except ConnectionError as outer:
        text = connect.error_text(outer)
    assert "InvalidAuthToken" in text and "Failed to connect" in text


def test_auto_is_ray_address_or_the_recorded_head_never_any_gcs_on_the_machine():
    assert connect.resolve_auto({"RAY_ADDRESS": AT}, "127.0.0.1:6379", "/tmp/ray/ray_current_cluster") == AT
    assert connect.resolve_auto({}, "127.0.0.1:6379\n", "/tmp/ray/ray_current_cluster") == "127.0.0.1:6379"
    with pytest.raises(ClusterUnavailableError, match="ray_current_cluster does not exist") as caught:
        connect.resolve_auto({"RAY_ADDRESS": "auto"}, None, "/tmp/ray/ray_current_cluster")
    assert isinstance(caught.value, FarmError) and "ray start --head" in str(caught.value)
    assert connect.default_address_file({"RAY_TMPDIR": "/x"}) == "/x/ray/ray_current_cluster"
    assert connect.default_address_file({"TMPDIR": "/y"}, "linux") == "/y/ray/ray_current_cluster"
    assert connect.default_address_file({}, "linux") == "/tmp/ray/ray_current_cluster"


@pytest.mark.parametrize("address, expected", [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)), ("[::1]:6379", ("::1", 6379)), ("ray://head:10001", ("head", 10001)),
])
def test_split_address(address, expected):
    assert connect.split_address(address) == expected


@pytest.mark.parametrize("address", ["head", "head:", "head:port", ":6379", "head:70000"])
def test_an_address_without_a_port_is_named(address):
    with pytest.raises(ClusterUnavailableError, match="is not HOST:PORT"):
        connect.split_address(address)


@pytest.mark.parametrize("timeout_s", [1, 10, 60, 300, 3600])
def test_rays_connect_bounds_fit_the_timeout(timeout_s):
    knobs = connect.connect_knobs(timeout_s, {})
    connect_s, request_s = int(knobs["RAY_gcs_rpc_server_connect_timeout_s"]), int(knobs["RAY_py_gcs_connect_timeout_s"])
    attempts = int(knobs["RAY_gcs_server_port_wait_time_s"])
    assert attempts >= 1 and 1 <= connect_s <= 5 and 2 <= request_s <= 30
    assert attempts * (2 * connect_s + request_s + 1) <= max(timeout_s, 2 * connect_s + request_s + 1)


def test_the_operators_own_ray_settings_are_kept():
    assert "RAY_py_gcs_connect_timeout_s" not in connect.connect_knobs(60, {"RAY_py_gcs_connect_timeout_s": "90"})


def test_the_embedded_cluster_gets_a_private_token_unless_the_operator_chose():
    token = connect.private_token_environment({})["RAY_AUTH_TOKEN"]
    assert len(token) == 64 and token != connect.private_token_environment({})["RAY_AUTH_TOKEN"]
    assert connect.private_token_environment({"RAY_AUTH_MODE": "token"})  # on, but no token: ours
    for chosen in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "mine"}, {"RAY_AUTH_TOKEN_PATH": "/run/t"}):
        assert connect.private_token_environment(chosen) == {}
