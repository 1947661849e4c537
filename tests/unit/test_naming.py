import pytest

from awf_kernel import naming


@pytest.mark.parametrize("kernel_id,role,name", [
    ("0b8e0f4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "proxy", "awf-0b8e0f4e1c2d-proxy"),
    ("ABC", "kernel", "awf-abc-kernel"),
    ("", "ingress", "awf-nokernel-ingress"),
])
def test_resource_name(kernel_id, role, name):
    assert naming.resource_name(kernel_id, role) == name


def test_labels_share_one_prefix():
    labels = naming.labels("k", "proxy", "host:1")
    assert all(k.startswith(naming.LABEL_PREFIX + ".") for k in labels)
    assert labels[naming.KERNEL_ID] == "k" and labels[naming.MANAGED] == "true"


def test_unknown_role_is_refused():
    with pytest.raises(ValueError):
        naming.labels("k", "sidecar")


def test_filter_selects_one_kernel():
    assert naming.kernel_filter("k") == {"label": [f"{naming.MANAGED}=true", f"{naming.KERNEL_ID}=k"]}


@pytest.mark.parametrize("kernel_id", [
    "0b8e0f4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "0B8E0F4E-1C2D-4E5F-8A9B-0C1D2E3F4A5B", "0b8e0f4e", "k", "a" * 64,
])
def test_valid_kernel_ids(kernel_id):
    assert naming.valid_kernel_id(kernel_id) == kernel_id


@pytest.mark.parametrize("kernel_id", [
    "", ".", "..", "../x", "a/b", "/", "a\x00b", "a" * 65, "a\n", "\na", "a b", "a_b", "a.b", "\u202eab",
    "\uff10", "k\u0456", None, 5, b"abc",
])
def test_invalid_kernel_ids_are_refused_clearly(kernel_id):
    with pytest.raises(ValueError) as info:
        naming.valid_kernel_id(kernel_id)
    message = str(info.value)
    assert message.startswith("invalid kernel id ") and "letters, digits and '-'" in message
    assert message.isprintable() and len(message) < 300


def test_provisioner_refuses_a_kernel_id_that_would_escape_its_folders():
    import asyncio

    import pytest

    from awf_kernel.errors import SandboxStartError
    from awf_kernel.provisioner import AWFProvisioner

    prov = AWFProvisioner(kernel_id="../../etc", connection_info={})
    with pytest.raises(SandboxStartError, match="invalid kernel id"):
        asyncio.run(prov.pre_launch(env={}))
