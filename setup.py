"""Build step of the wheel: generate the gRPC code from protos/ and carry deploy/policies.

Generated modules are not in the repository. `make proto` writes them beside the sources for
development; a wheel or sdist build writes them into the build tree here, so a wheel built from a
clean checkout carries them (and the province policies, as medaid/policies/*.toml).
All metadata is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithGeneratedCode(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the sources; `make proto` generates beside them
        from grpc_tools import protoc  # build requirement (pyproject [build-system])

        out = Path(self.build_lib)
        protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "protos").rglob("*.proto"))
        include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
        args = ["grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"-I{include}", f"--python_out={out}",
                f"--pyi_out={out}", f"--grpc_python_out={out}", *(str(ROOT / p) for p in protos)]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + " ".join(protos))
        for proto in protos:
            (out / Path(proto).relative_to("protos").parent / "__init__.py").touch()
        policies = out / "medaid" / "policies"
        policies.mkdir(parents=True, exist_ok=True)
        for toml in sorted((ROOT / "deploy" / "policies").glob("*.toml")):
            shutil.copy2(toml, policies / toml.name)


setup(cmdclass={"build_py": BuildWithGeneratedCode})
