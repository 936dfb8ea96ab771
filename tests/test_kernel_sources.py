"""Rules of the kernel sources that no run can check reliably: a data race shows only now and then.

Inside a ``prange`` body Cython makes private (one copy per thread) exactly the variables the body assigns; any other
variable is shared by every thread. A body that hands a scalar's address to a function (``span_start(..., &m)``)
without assigning it writes one shared variable from every thread: each thread may go on with another thread's value.
That happened: ``memory.count_nonzero`` on two threads counted 0 of 9 values now and then (a span ran with another
span's length), and the optimisers' and activations' spans were written the same way (correct only while the
compiler kept the value in a register). These tests read every ``.pyx`` and refuse the pattern.
"""
import pathlib
import re

import pytest

KERNELS = pathlib.Path(__file__).resolve().parents[1] / "cynet" / "_kernels"
SOURCES = sorted(KERNELS.glob("*.pyx"))

ASSIGNED = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:=|\+=|-=|\*=|/=)(?!=)")
ADDRESS_OF_SCALAR = re.compile(r"&([A-Za-z_]\w*)\s*[,)]")       # &m) or &m, (not &x[i]: an element of an array)


def prange_bodies(text):
    """(line number of the prange, [(line number, line)] of its body) for every ``for ... in prange(...)`` loop."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not (line.lstrip().startswith("for ") and "prange(" in line):
            continue
        indent = len(line) - len(line.lstrip())
        body = []
        for j in range(i + 1, len(lines)):
            if lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) <= indent:
                break
            body.append((j + 1, lines[j]))
        yield i + 1, body


def shared_addresses(text):
    """(line, variable) for each scalar whose address a prange body passes on without assigning it."""
    found = []
    for _, body in prange_bodies(text):
        assigned = {m.group(1) for _, line in body for m in [ASSIGNED.match(line)] if m}
        for number, line in body:
            for name in ADDRESS_OF_SCALAR.findall(line.split("#")[0]):
                if name not in assigned:
                    found.append((number, name))
    return found


def test_the_sources_are_there():
    assert len(SOURCES) >= 8 and any(p.name == "optim.pyx" for p in SOURCES)
    assert sum(len(list(prange_bodies(p.read_text()))) for p in SOURCES) >= 20


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_no_prange_body_writes_a_shared_scalar_through_its_address(path):
    found = shared_addresses(path.read_text())
    assert not found, (f"{path.name}: a prange body passes the address of a variable it does not assign, so every "
                       f"thread writes one shared copy: {found}; return the value and assign it instead")


def test_the_check_finds_the_pattern_that_raced():
    """The check itself, on the loop that counted wrong and on its repaired form."""
    raced = ("    with nogil:\n"
             "        for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=t):\n"
             "            lo = span_start(c, head, chunk, n, &m)\n"
             "            total += _count_span(&x[lo], m)\n")
    repaired = ("    with nogil:\n"
                "        for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=t):\n"
                "            lo = span_start(c, head, chunk, n)\n"
                "            m = span_length(c, head, chunk, n)\n"
                "            total += _count_span(&x[lo], m)\n")
    assert shared_addresses(raced) == [(3, "m")]
    assert shared_addresses(repaired) == []
    # a variable the body assigns is private, its address is the thread's own
    assert shared_addresses(raced.replace("            lo =", "            m = 0\n            lo =")) == []
