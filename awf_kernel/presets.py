"""Named bundles for allow lists: `"allow_domains": ["@pypi"]`.

Exact hosts wherever the service allows it, so a preset admits no more than
the tool needs. `awf-kernel presets` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PolicyError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    domains: tuple[str, ...]


PRESETS = {p.name: p for p in (
    Preset("pypi", "pip install from PyPI",
           ("pypi.org", "files.pythonhosted.org")),
    Preset("conda", "conda/mamba install from Anaconda and conda-forge channels",
           ("conda.anaconda.org", "repo.anaconda.com", "api.anaconda.org", "conda-static.anaconda.org")),
    Preset("github", "git clone/fetch, the GitHub API, release downloads and raw files",
           ("github.com", "api.github.com", "codeload.github.com", "objects.githubusercontent.com",
            "raw.githubusercontent.com", "release-assets.githubusercontent.com")),
    Preset("huggingface", "Hugging Face Hub models and datasets",
           ("huggingface.co", "cdn-lfs.huggingface.co", "cdn-lfs-us-1.huggingface.co",
            "cdn-lfs-eu-1.huggingface.co", "cas-bridge.xethub.hf.co", "*.hf.co")),
    Preset("npm", "npm install from the npm registry",
           ("registry.npmjs.org",)),
)}


def expand(entry: str) -> tuple[str, ...]:
    name = entry[1:] if entry.startswith("@") else entry
    if name not in PRESETS:
        known = ", ".join("@" + n for n in sorted(PRESETS))
        raise PolicyError(f"unknown preset {entry!r}", hint=f"known presets: {known} (awf-kernel presets)")
    return PRESETS[name].domains
