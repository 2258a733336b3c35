"""Installed library versions that are known not to work together, named before they fail mid-run."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from dreamcli.errors import IncompatibleLibraries


def declared_range(package: str) -> str:
    """The version range dreamcli's own metadata asks for `package` ('' when it names none)."""
    try:
        lines = requires("dreamcli") or []
    except PackageNotFoundError:
        return ""
    for line in lines:
        req = Requirement(line)
        if req.name.lower() == package and not req.marker:
            return str(req.specifier)
    return ""


def check_peft(text_encoder: bool) -> None:
    """Raise IncompatibleLibraries when the installed peft is older than what diffusers (UNet adapters)
    or, with `text_encoder`, transformers (text-encoder adapters) require; both name their minimum."""
    from diffusers.utils.constants import MIN_PEFT_VERSION as diffusers_min

    needs = [("diffusers", diffusers_min)]
    if text_encoder:
        try:
            from transformers.integrations.peft import MIN_PEFT_VERSION as transformers_min
        except ImportError:  # releases before the constant existed work with any peft dreamcli allows
            transformers_min = None
        if transformers_min:
            needs.append(("transformers", transformers_min))
    peft_version = version("peft")
    for library, minimum in needs:
        if Version(peft_version) < Version(minimum):
            pinned, installed = declared_range(library), version(library)
            # Going back into dreamcli's declared range helps only when the installed release is outside it.
            back = pinned and not SpecifierSet(pinned).contains(installed)
            older = f", or pip install '{library}{pinned}'" if back else ""
            raise IncompatibleLibraries(
                f"{library} {installed} needs peft >= {minimum}, but peft {peft_version} is installed: "
                f"pip install 'peft>={minimum}'{older} (scripts/setup.sh installs the tested versions)"
            )
