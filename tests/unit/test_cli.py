"""The CLI's pure parts: install with settings, argument errors, presets."""

from __future__ import annotations

import json

import pytest

from awf_kernel.cli import main


def _spec(prefix):
    with open(prefix / "share/jupyter/kernels/awf-python/kernel.json") as f:
        return json.load(f)


def test_install_stores_settings_in_the_spec(tmp_path):
    assert main(["install", "--prefix", str(tmp_path), "--set", "egress_network=testnet",
                 "--set", "dns_servers=10.1.2.3,10.1.2.4", "--set", 'domain_ceiling=[".example.org"]',
                 "--set", "cpu_limit=2", "--set", "allow_domains=@pypi"]) == 0
    spec = _spec(tmp_path)
    assert spec["display_name"] == "Python (AWF sandboxed)" and spec["interrupt_mode"] == "message"
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "awf-provisioner"
    assert prov["config"] == {"egress_network": "testnet", "dns_servers": ["10.1.2.3", "10.1.2.4"],
                              "domain_ceiling": [".example.org"], "cpu_limit": 2.0, "allow_domains": ["@pypi"]}
    assert spec["argv"][1:3] == ["-m", "awf_kernel.refuse"]


@pytest.mark.parametrize("setting,fragment", [
    ("bogus=1", "unknown setting 'bogus'"), ("cpu_limit=abc", "expected a float"),
    ('allow_domains=["*"]', "would allow everything"), ("dns_servers=dns.example", "not an IP address"),
    ("no-equals-sign", "unknown setting"), ("kernel_uid=0", "kernel_uid 0"), ("kernel_gid=13", "kernel_gid 13"),
    ("extra_mounts=data:/data", "absolute"), ("mem_limit=lots", "mem_limit"), ("deny_read=../x", "deny_read"),
    ("domain_ceiling=.com", "public suffix"),
])
def test_bad_settings_are_refused_with_the_fix(tmp_path, capsys, setting, fragment):
    assert main(["install", "--prefix", str(tmp_path), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Hint:" in err
    assert not (tmp_path / "share").exists()


def test_name_and_display_name(tmp_path):
    assert main(["install", "--prefix", str(tmp_path), "--name", "awf-py-2", "--display-name", "Other"]) == 0
    with open(tmp_path / "share/jupyter/kernels/awf-py-2/kernel.json") as f:
        assert json.load(f)["display_name"] == "Other"


def test_a_name_alone_gives_a_display_name_of_its_own(tmp_path, capsys):
    """Several specs installed with --name only must not all read "Python (AWF sandboxed)" in the picker."""
    assert main(["install", "--prefix", str(tmp_path), "--name", "awf-strict"]) == 0
    assert main(["install", "--prefix", str(tmp_path)]) == 0
    names = {}
    for name in ("awf-strict", "awf-python"):
        with open(tmp_path / f"share/jupyter/kernels/{name}/kernel.json") as f:
            names[name] = json.load(f)["display_name"]
    assert names == {"awf-strict": "Python (AWF sandboxed: awf-strict)", "awf-python": "Python (AWF sandboxed)"}
    assert "(Python (AWF sandboxed: awf-strict))" in capsys.readouterr().out


def test_settings_are_stored_as_the_provisioner_reads_them(tmp_path):
    assert main(["install", "--prefix", str(tmp_path), "--set", "kernel_uid=1234",
                 "--set", "extra_mounts=/srv/data:/data:ro", "--set", "domain_ceiling=null"]) == 0
    config = _spec(tmp_path)["metadata"]["kernel_provisioner"]["config"]
    assert config == {"kernel_uid": 1234, "extra_mounts": ["/srv/data:/data:ro"], "domain_ceiling": None}


def test_presets_listing(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "@pypi" in out and "files.pythonhosted.org" in out and "@huggingface" in out


def test_refuse_module_exits_nonzero(capsys):
    from awf_kernel import refuse

    assert refuse.main() != 0
    assert "refusing" in capsys.readouterr().err
