"""The broker's settings: validated when set, loaded strictly, overridden per user/group."""

from __future__ import annotations

import pytest
from traitlets import TraitError

from awf_kernel.broker import config
from awf_kernel.broker.config import BrokerConfig, BrokerConfigError


@pytest.mark.parametrize("name, value, message", [
    ("allow_domains", ["*"], "would allow everything"),
    ("block_domains", ["10.0.0.1"], "IP address"),
    ("domain_ceiling", [".com"], "public suffix"),
    ("allow_private_destinations", ["169.254.0.0/16"], "no pod may reach"),
    ("allow_private_destinations", ["fd00::/8"], "IPv6"),
    ("deny_write", ["~/../etc"], "'..'"),
    ("deny_read", ["/"], "every folder"),
    ("dns_servers", ["dns.example"], "not an IPv4 address"),
    ("image", "evil image", "not an image name"),
    ("allowed_images", ["ok:1", "--privileged"], "not an image name"),
    ("egress_network", "host", "bridge network"),
    ("mem_limit", "lots", "not a size"),
    ("tmp_size", "-1m", "not a size"),
    ("cpu_limit", -1.0, "out of range"),
    ("startup_timeout", 0.0, "out of range"),
    ("kernels_per_user", 0, "at least 1"),
    ("min_uid", 0, "at least 1"),
    ("pids_limit", -5, "at least 0"),
    ("kernel_cmd", [], "non-empty"),
    ("socket_path", "relative.sock", "absolute path"),
    ("audit_dir", "/", "below /"),
    ("runtime_dir", "/var/../etc", "absolute path below /"),
    ("notebook_roots", ["/"], "any folder"),
    ("notebook_roots", ["~bob"], "must be ~"),
    ("notebook_roots", ["srv/notebooks"], "must be ~"),
    ("overrides", {"alice": {}}, "'user:NAME' or 'group:NAME'"),
    ("overrides", {"user:alice": {"socket_path": "/x"}}, "cannot be overridden"),
    ("overrides", {"user:alice": {"min_uid": 0}}, "cannot be overridden"),
    ("overrides", {"group:staff": {"allow_domains": ["*"]}}, "would allow everything"),
    ("overrides", {"user:alice": ["pypi.org"]}, "must be a dict"),
])
def test_bad_values_are_refused_when_set(name, value, message):
    with pytest.raises(TraitError) as info:
        BrokerConfig(**{name: value})
    assert message in str(info.value)


def test_defaults():
    cfg = BrokerConfig()
    assert cfg.socket_path == "/run/awf-kernel/broker.sock" and cfg.runtime() == "/run/awf-kernel"
    assert cfg.audit_dir == "/var/lib/awf-kernel/audit"
    assert cfg.images() == [cfg.image] and cfg.kernels_per_user == 5 and cfg.min_uid == 1000
    assert cfg.roots("/home/alice") == ["/home/alice"]


def test_roots_images_and_overrides():
    cfg = BrokerConfig(notebook_roots=["~", "~/work", "/srv/notebooks"], allowed_images=["other:1"],
                       kernels_per_user=3, allow_domains=["pypi.org"],
                       overrides={"group:staff": {"kernels_per_user": 7, "allow_domains": ["github.com"]},
                                  "group:students": {"kernels_per_user": 1},
                                  "user:alice": {"kernels_per_user": 9}})
    assert cfg.roots("/home/bob") == ["/home/bob", "/home/bob/work", "/srv/notebooks"]
    assert cfg.roots("/") == ["/srv/notebooks"]  # no usable home: no `~` roots
    assert cfg.images() == [cfg.image, "other:1"]
    assert cfg.for_user("alice", ["staff"]).kernels_per_user == 9       # user beats group
    bob = cfg.for_user("bob", ["staff"])
    assert bob.kernels_per_user == 7 and bob.allow_domains == ["github.com"]
    assert cfg.for_user("carol", ["students"]).kernels_per_user == 1
    assert cfg.for_user("dave", []).kernels_per_user == 3
    assert cfg.kernels_per_user == 3  # the defaults are untouched


def test_load_python_and_json(tmp_path):
    py = tmp_path / "broker.py"
    py.write_text('c.BrokerConfig.allow_domains = ["pypi.org"]\nc.BrokerConfig.kernels_per_user = 2\n')
    cfg = config.load(str(py), socket_path="/tmp/x.sock")
    assert cfg.allow_domains == ["pypi.org"] and cfg.kernels_per_user == 2 and cfg.socket_path == "/tmp/x.sock"
    js = tmp_path / "broker.json"
    js.write_text('{"BrokerConfig": {"min_uid": 2000, "overrides": {"user:x": {"mem_limit": "1g"}}}}')
    cfg = config.load(str(js))
    assert cfg.min_uid == 2000 and cfg.for_user("x").mem_limit == "1g"


@pytest.mark.parametrize("text, message", [
    ('c.BrokerConfig.alow_domains = ["pypi.org"]\n', "unknown setting BrokerConfig.alow_domains"),
    ('c.AWFProvisioner.allow_domains = ["pypi.org"]\n', "configures AWFProvisioner"),
    ('c.BrokerConfig.mem_limit = "lots"\n', "not a size"),
    ("this is not python\n", "cannot read config file"),
])
def test_load_refuses_bad_files(tmp_path, text, message):
    path = tmp_path / "broker.py"
    path.write_text(text)
    with pytest.raises(BrokerConfigError) as info:
        config.load(str(path))
    assert message in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(BrokerConfigError, match="does not exist"):
        config.load(str(tmp_path / "nope.py"))
