"""The broker's wire protocol: every field's schema, and no input that makes
`parse_request` raise anything but ProtocolError."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from awf_kernel.broker import protocol
from awf_kernel.broker.protocol import ProtocolError, parse_request

KID = "4bfe02e6-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
PORTS = {"shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003, "hb_port": 50004, "control_port": 50005}
START = {"op": "start", "kernel_id": KID, "ports": PORTS, "key": "0123456789abcdef0123456789abcdef",
         "cwd": "/home/alice/project"}


def _raw(obj) -> bytes:
    return json.dumps(obj).encode()


def _start(**changes):
    req = {**START, **changes}
    return {k: v for k, v in req.items() if v is not _DROP}


_DROP = object()


def test_a_full_start_request():
    req = parse_request(_raw(_start(
        v=1, signature_scheme="hmac-sha512", notebook="/home/alice/project/a.ipynb",
        policy={"allow_domains": ["pypi.org", "@github"], "block_domains": ["evil.example.com"], "mode": "enforce"},
        kernel_cmd=["python3", "-m", "ipykernel_launcher", "-f", "/awf/connection/kernel.json"],
        env={"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "JPY_SESSION_NAME": "/home/alice/a.ipynb"},
        image="awf-kernel/kernel:0.1.0", server_paths={"deny_write": ["/home/alice/.venv/"], "if_present": []})))
    s = req.start
    assert req.op == "start" and req.kernel_id == KID == s.kernel_id
    assert s.ports == PORTS and s.signature_scheme == "hmac-sha512"
    assert s.cwd == "/home/alice/project" and s.notebook == "/home/alice/project/a.ipynb"
    assert [str(r) for r in s.policy.block] == ["evil.example.com"] and s.policy.mode == "enforce"
    assert s.kernel_cmd[0] == "python3" and s.env["TZ"] == "UTC" and s.image == "awf-kernel/kernel:0.1.0"
    assert s.server_paths == {"deny_write": ("/home/alice/.venv/",), "if_present": ()}


def test_a_minimal_start_request_gets_defaults():
    s = parse_request(_raw(START)).start
    assert s.signature_scheme == "hmac-sha256"
    assert (s.notebook, s.policy, s.kernel_cmd, s.env, s.image, s.server_paths) == (None, None, None, {}, None, {})


@pytest.mark.parametrize("obj, expected", [
    ({"op": "ping"}, protocol.Request("ping")),
    ({"op": "list", "v": 1}, protocol.Request("list")),
    ({"op": "gc"}, protocol.Request("gc")),
    ({"op": "status", "kernel_id": KID}, protocol.Request("status", KID)),
    ({"op": "stop", "kernel_id": "abc"}, protocol.Request("stop", "abc")),
    ({"op": "signal", "kernel_id": KID, "signal": 2}, protocol.Request("signal", KID, signal=2)),
    ({"op": "signal", "kernel_id": KID, "signal": 9}, protocol.Request("signal", KID, signal=9)),
    ({"op": "signal", "kernel_id": KID, "signal": 15}, protocol.Request("signal", KID, signal=15)),
    ({"op": "logs", "kernel_id": KID}, protocol.Request("logs", KID, limit=protocol.DEFAULT_LOG_RECORDS)),
    ({"op": "logs", "kernel_id": KID, "limit": 5}, protocol.Request("logs", KID, limit=5)),
])
def test_other_ops(obj, expected):
    assert parse_request(_raw(obj)) == expected


BAD = [
    # envelope
    ("not an object", [1, 2], "JSON object"),
    ("a string", "ping", "JSON object"),
    ("no op", {"kernel_id": KID}, "op:"),
    ("unknown op", {"op": "exec"}, "op: 'exec' is not one of"),
    ("op not a string", {"op": ["ping"]}, "op:"),
    ("bad version", {"op": "ping", "v": 2}, "protocol version 2"),
    ("version as bool", {"op": "ping", "v": True}, "protocol version"),
    ("unknown key on ping", {"op": "ping", "x": 1}, "unknown field 'x'"),
    ("kernel id on list", {"op": "list", "kernel_id": KID}, "unknown field 'kernel_id'"),
    # kernel ids
    ("status without id", {"op": "status"}, "kernel_id is missing"),
    ("id with slash", {"op": "status", "kernel_id": "../etc"}, "invalid kernel id"),
    ("id with newline", {"op": "stop", "kernel_id": "abc\n"}, "invalid kernel id"),
    ("id too long", {"op": "stop", "kernel_id": "a" * 65}, "65 characters"),
    ("id empty", {"op": "stop", "kernel_id": ""}, "empty"),
    ("id a number", {"op": "stop", "kernel_id": 12}, "not a string"),
    ("id null", {"op": "status", "kernel_id": None}, "not a string"),
    # signals
    ("signal missing", {"op": "signal", "kernel_id": KID}, "signal is missing"),
    ("SIGSTOP", {"op": "signal", "kernel_id": KID, "signal": 19}, "19 is not allowed"),
    ("SIGHUP", {"op": "signal", "kernel_id": KID, "signal": 1}, "1 is not allowed"),
    ("signal 0", {"op": "signal", "kernel_id": KID, "signal": 0}, "not in 1..64"),
    ("signal by name", {"op": "signal", "kernel_id": KID, "signal": "SIGKILL"}, "must be an integer"),
    ("signal bool", {"op": "signal", "kernel_id": KID, "signal": True}, "must be an integer"),
    ("signal float", {"op": "signal", "kernel_id": KID, "signal": 9.0}, "must be an integer"),
    # logs
    ("limit 0", {"op": "logs", "kernel_id": KID, "limit": 0}, "not in 1..10000"),
    ("limit huge", {"op": "logs", "kernel_id": KID, "limit": 10 ** 9}, "not in 1..10000"),
    ("limit string", {"op": "logs", "kernel_id": KID, "limit": "5"}, "must be an integer"),
    # start: required fields
    ("no kernel id", _start(kernel_id=_DROP), "kernel_id is missing"),
    ("no ports", _start(ports=_DROP), "ports is missing"),
    ("no key", _start(key=_DROP), "key is missing"),
    ("no cwd", _start(cwd=_DROP), "cwd is missing"),
    # ports
    ("ports a list", _start(ports=[1, 2, 3, 4, 5]), "ports: must be an object"),
    ("a port missing", _start(ports={k: v for k, v in PORTS.items() if k != "hb_port"}), "hb_port is missing"),
    ("extra port", _start(ports={**PORTS, "debug_port": 50006}), "unknown key 'debug_port'"),
    ("privileged port", _start(ports={**PORTS, "shell_port": 80}), "not in 1024..65535"),
    ("port too big", _start(ports={**PORTS, "shell_port": 70000}), "not in 1024..65535"),
    ("port a string", _start(ports={**PORTS, "shell_port": "50001"}), "must be an integer"),
    ("port a bool", _start(ports={**PORTS, "shell_port": True}), "must be an integer"),
    ("port a float", _start(ports={**PORTS, "shell_port": 50001.0}), "must be an integer"),
    ("ports not distinct", _start(ports={**PORTS, "hb_port": 50001}), "distinct"),
    # key and signature
    ("key short", _start(key="short"), "16-256 characters"),
    ("key empty", _start(key=""), "16-256 characters"),
    ("key long", _start(key="k" * 257), "16-256 characters"),
    ("key not a string", _start(key=12345678901234567890), "must be a string"),
    ("key with space", _start(key="0123456789 abcdef"), "printable ASCII"),
    ("key non-ascii", _start(key="0123456789abcdef\u00e9"), "printable ASCII"),
    ("md5", _start(signature_scheme="hmac-md5"), "signature_scheme"),
    ("no signing", _start(signature_scheme=""), "signature_scheme"),
    ("scheme a list", _start(signature_scheme=["hmac-sha256"]), "signature_scheme"),
    # paths
    ("cwd relative", _start(cwd="project"), "absolute path"),
    ("cwd empty", _start(cwd=""), "1-4096 characters"),
    ("cwd NUL", _start(cwd="/home/a\0b"), "NUL"),
    ("cwd control char", _start(cwd="/home/a\nb"), "control characters"),
    ("cwd long", _start(cwd="/" + "a" * 4096), "1-4096 characters"),
    ("cwd a list", _start(cwd=["/home"]), "must be a string"),
    ("notebook relative", _start(notebook="a.ipynb"), "absolute path"),
    ("notebook not ipynb", _start(notebook="/home/a/.bashrc"), "not a .ipynb"),
    ("notebook a number", _start(notebook=3), "must be a string"),
    # policy request
    ("policy a list", _start(policy=["pypi.org"]), "policy: must be an object"),
    ("policy a string", _start(policy='{"allow_domains": []}'), "policy: must be an object"),
    ("policy unknown key", _start(policy={"allow": ["pypi.org"]}), "unknown key 'allow'"),
    ("policy star", _start(policy={"allow_domains": ["*"]}), "would allow everything"),
    ("policy tld", _start(policy={"allow_domains": [".com"]}), "public suffix"),
    ("policy ip", _start(policy={"allow_domains": ["10.0.0.1"]}), "IP address"),
    ("policy not a list", _start(policy={"allow_domains": "pypi.org"}), "must be a list"),
    ("policy mode", _start(policy={"mode": "open"}), "not one of"),
    ("policy too many", _start(policy={"allow_domains": [f"h{i}.example.com" for i in range(1001)]}), None),
    # command, env, image
    ("cmd a string", _start(kernel_cmd="python3 -m ipykernel"), "kernel_cmd: must be a list"),
    ("cmd empty", _start(kernel_cmd=[]), "kernel_cmd: must be a list of 1-64"),
    ("cmd long", _start(kernel_cmd=["x"] * 65), "kernel_cmd: must be a list of 1-64"),
    ("cmd arg a number", _start(kernel_cmd=["python3", 3]), "must be a string"),
    ("cmd arg NUL", _start(kernel_cmd=["python3\0"]), "NUL"),
    ("env a list", _start(env=["LANG=C"]), "env: must be an object"),
    ("env PATH", _start(env={"PATH": "/tmp"}), "'PATH' may not be passed"),
    ("env LD_PRELOAD", _start(env={"LD_PRELOAD": "/tmp/x.so"}), "may not be passed"),
    ("env token", _start(env={"JUPYTERHUB_API_TOKEN": "x"}), "may not be passed"),
    ("env glob trick", _start(env={"LC_\n": "x"}), "may not be passed"),
    ("env value a number", _start(env={"LANG": 1}), "must be a string"),
    ("env value long", _start(env={"LANG": "x" * 4097}), "0-4096 characters"),
    ("env too many", _start(env={f"LC_X{i}": "x" for i in range(33)}), "at most 32"),
    ("image with spaces", _start(image="evil image"), "not an image name"),
    ("image option", _start(image="--privileged"), "not an image name"),
    ("image a list", _start(image=["x"]), "must be a string"),
    ("server paths relative", _start(server_paths={"deny_write": ["home/x"]}), "absolute path"),
    ("server paths dotdot", _start(server_paths={"deny_write": ["/home/../etc"]}), "without '..'"),
    ("server paths root", _start(server_paths={"deny_read": ["/"]}), "below /"),
    ("server paths unknown", _start(server_paths={"allow": ["/x"]}), "unknown key 'allow'"),
    ("server paths many", _start(server_paths={"if_present": ["/x"] * 257}), "at most 256"),
    # admin settings are not in the schema, and say so
    ("extra mounts", _start(extra_mounts=["/:/host"]), "'extra_mounts' is an admin setting"),
    ("kernel uid", _start(kernel_uid=0), "'kernel_uid' is an admin setting"),
    ("kernel gid", _start(kernel_gid=0), "'kernel_gid' is an admin setting"),
    ("mem limit", _start(mem_limit="100g"), "'mem_limit' is an admin setting"),
    ("pids limit", _start(pids_limit=0), "'pids_limit' is an admin setting"),
    ("admin allow list", _start(allow_domains=["*.com"]), "'allow_domains' is an admin setting"),
    ("ceiling", _start(domain_ceiling=None), "'domain_ceiling' is an admin setting"),
    ("egress network", _start(egress_network="host"), "'egress_network' is an admin setting"),
    ("dns", _start(dns_servers=["8.8.8.8"]), "'dns_servers' is an admin setting"),
    ("private ranges", _start(allow_private_destinations=["10.0.0.0/8"]), "'allow_private_destinations'"),
    ("proxy image", _start(proxy_image="x"), "'proxy_image' is an admin setting"),
    ("allowed images", _start(allowed_images=["x"]), "'allowed_images' is an admin setting"),
    ("owner", _start(owner_uid=1000), "'owner_uid' is an admin setting"),
    ("unknown", _start(privileged_mode=True), "unknown field 'privileged_mode'"),
]


@pytest.mark.parametrize("name, obj, message", BAD, ids=[b[0] for b in BAD])
def test_refused(name, obj, message):
    with pytest.raises(ProtocolError) as info:
        parse_request(_raw(obj))
    if message:
        assert message in info.value.message
    assert info.value.message.isascii() and "\n" not in info.value.message


@pytest.mark.parametrize("raw, message", [
    (b"", "empty request"),
    (b"   ", "empty request"),
    (b"\xff\xfe", "not UTF-8"),
    (b"{", "not one JSON object"),
    (b'{"op": "ping"} {"op": "ping"}', "not one JSON object"),
    (b'{"op": "ping", "op": "gc"}', "duplicate key 'op'"),
    (b'{"op": "signal", "kernel_id": "k", "signal": NaN}', "NaN is not JSON"),
    (b'{"op": "signal", "kernel_id": "k", "signal": Infinity}', "Infinity is not JSON"),
    (b"[" * 50000, "not one JSON object"),
    (b"1" * 5000, "not one JSON object"),
    (b"x" * (protocol.MAX_REQUEST + 1), "at most 65536"),
])
def test_refused_bytes(raw, message):
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    assert message in info.value.message


def test_error_messages_show_hostile_values_escaped():
    with pytest.raises(ProtocolError) as info:
        parse_request(_raw({"op": "ping", "\x1b[2J\u202e": 1}))
    assert "\\x1b" in info.value.message and "\x1b" not in info.value.message


def test_responses_are_one_ascii_line():
    line = protocol.encode(protocol.error("bad \u202e\n thing", "refused", hint="h"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert json.loads(line) == {"ok": False, "error": "bad \u202e\n thing", "code": "refused", "hint": "h"}


# --- fuzzing ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=6),
    max_leaves=30)

FIELD_NAMES = ["op", "v", "kernel_id", "ports", "key", "signature_scheme", "cwd", "notebook", "policy",
               "kernel_cmd", "env", "image", "server_paths", "signal", "limit", "extra_mounts"]
requestish = st.fixed_dictionaries(
    {"op": st.sampled_from([*protocol.OPS, "nope"]) | json_values},
    optional={name: json_values for name in FIELD_NAMES[1:]})


def _parse_or_refuse(data: bytes) -> None:
    try:
        parse_request(data)
    except ProtocolError as exc:
        assert isinstance(exc.message, str)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(data):
    _parse_or_refuse(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_arbitrary_json(value):
    _parse_or_refuse(json.dumps(value).encode())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requestish)
def test_fuzz_requests_with_real_field_names(obj):
    _parse_or_refuse(json.dumps(obj).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(list(START) + ["policy", "env", "notebook"]), json_values, max_size=4))
def test_fuzz_start_with_one_field_changed(changes):
    _parse_or_refuse(json.dumps({**START, **changes}).encode())
