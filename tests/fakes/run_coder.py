"""``python -m tests.fakes.run_coder ARGS``: the ``coder`` CLI in a process with the CPU stand-ins
for TensorRT and cudart installed (tests only: lets ``benchmarks/gpu_check.sh`` run end to end in CI)."""

import sys

from tests import fakes


class _ProcessPatch:
    """The two monkeypatch methods ``fakes.install`` uses, applied for the whole process."""

    def setattr(self, obj, name, value):
        setattr(obj, name, value)

    def setitem(self, mapping, key, value):
        mapping[key] = value


if __name__ == "__main__":
    fakes.install(_ProcessPatch())
    from coder.cli import main

    sys.exit(main(sys.argv[1:]))
