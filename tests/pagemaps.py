"""What the kernel maps: transparent huge pages of a range of this process's memory."""

from pathlib import Path

from adagrad_gluon.optim import pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str:
    """The selected transparent huge page mode: 'always', 'madvise' or 'never' (also where the
    kernel has none)."""
    try:
        text = THP.read_text()
    except OSError:
        return "never"
    return text[text.index("[") + 1:text.index("]")]


def anon_huge_kb(address: int, size: int) -> int:
    """AnonHugePages (kB) of the mappings overlapping ``[address, address + size)``, from
    /proc/self/smaps: whole mappings, so give it arrays above glibc's largest mmap threshold
    (32 MiB), which get mappings of their own (smaller ones may share the heap's)."""
    end, total, inside = address + size, 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and ":" not in fields[0]:
            low, high = (int(x, 16) for x in fields[0].split("-"))
            inside = low < end and high > address
        elif inside and fields[0] == "AnonHugePages:":
            total += int(fields[1])
    return total


def record_madvise(monkeypatch) -> list:
    """``(start, length, advice)`` of every madvise call :mod:`adagrad_gluon.optim.pages`
    makes from now on (the test's end undoes it), each passed on to the real one."""
    seen = []
    real = pages._madvise()

    def recording(start, length, advice):
        seen.append((start, length, advice))
        return real(start, length, advice) if real is not None else 0

    monkeypatch.setattr(pages, "_madvise", lambda: recording)
    return seen
