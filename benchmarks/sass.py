"""Dynamic warp-instruction counts of a compiled kernel, read from its SASS.

``disassemble`` runs ``nvdisasm`` (Triton's bundled copy, else the CUDA toolkit's) on a cubin
with line information and returns each function's instructions, with the source line chain
(innermost line first, then the "inlined at" lines) of every instruction.

``count`` turns the static code into dynamic counts per launch of one warp:

* Loops are the back-edges of the SASS (a branch to an earlier address); nested by address
  range.
* Each SASS loop is mapped to the source loop (``source_loops``: Python ``for`` statements
  by ``ast``, C/C++ ``for`` statements by brace matching) whose line range holds its
  back-edge branch. The caller gives the trip count per source loop (``trips``), from the
  launch arguments; a SASS loop with no source loop, or a source loop the caller cannot
  resolve, is counted once and reported in ``Counts.unresolved``.
* The compiler may emit several SASS loops for one source loop: unrolled by k with a
  remainder loop, or versions picked at run time. A loop's unroll factor is the median,
  over the source lines of its body, of how many more copies of the line it holds than the
  group's sparsest loop; the group is charged ``trips x`` the largest per-iteration cost
  among its loops (the remainder loop's rate for unrolled code, which slightly overstates
  the loop overhead; the fullest version for versioned code). Peeled copies of an inner
  source loop's body outside its SASS loops are covered by that charge and not counted
  again; a source loop with no SASS loop at all was fully unrolled and its copies count once.
* Both arms of a branch inside a region count (an upper bound for uniform branches),
  unless the caller names the code that does not run (``skip``: a predicate on an
  instruction's source line chain, e.g. the call sites of the other dtypes of a run-time
  dtype switch); a loop whose source line (with its call sites) is skipped is not counted.

Classes: ``tensor`` (HGMMA/HMMA/IMMA..., with their FLOPs), ``fp32`` (FFMA/FADD/FMUL/...),
``global``, ``shared``, ``local`` memory instructions, and ``other``. Shared and local
instructions also carry bytes per warp (32 lanes x access width; ldmatrix/stmatrix by
their matrix count), and so do warpgroup MMAs, which read their shared-memory operands
(``gmma_shared_bytes``).
"""

from __future__ import annotations

import ast
import bisect
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from spectformer_kernels.triton_compile import run_on_cubin

CLASSES = ("tensor", "fp32", "global", "shared", "local", "other")

_TENSOR = ("HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA", "BGMMA", "BMMA", "DMMA")
_FP32 = ("FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "FSET", "FCHK", "FRND", "FSWZADD")
_GLOBAL = ("LDG", "STG", "LD", "ST", "RED", "ATOM", "ATOMG", "LDGSTS", "UTMALDG", "UTMASTG",
           "UBLKCP", "REDG")
_SHARED = ("LDS", "STS", "LDSM", "STSM", "ATOMS", "REDS")
_LOCAL = ("LDL", "STL")
_BRANCHES = ("BRA", "BRX", "JMP", "JMX")


@dataclass
class Instr:
    addr: int
    opcode: str  # with modifiers, e.g. "HGMMA.64x64x16.F32.BF16"
    operands: str
    lines: tuple  # ((file, line), ...) innermost first, then the "inlined at" chain
    target: Optional[str] = None  # branch label

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


@dataclass
class Function:
    name: str
    instrs: list
    labels: dict  # label -> address


# Opcode modifiers are upper case except MMA shapes ("HGMMA.64x16x16.F32.BF16").
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?"
                    r"([A-Z][A-Za-z0-9_.]*)\s*(.*?)\s*;")
_LINE = re.compile(r'(?:File|inlined at) "([^"]+)", line (\d+)')
_LABEL = re.compile(r"^(\.L_x_\d+):")
_SECTION = re.compile(r"^\.text\.(\S+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def parse(text: str) -> dict:
    """nvdisasm ``-c -gi`` output -> {function name: Function}."""
    functions: dict = {}
    current: Optional[Function] = None
    pending_lines: tuple = ()
    comments: list = []
    pending_labels: list = []
    for raw in text.splitlines():
        section = _SECTION.match(raw.strip())
        if section:
            current = Function(section.group(1), [], {})
            functions[current.name] = current
            pending_lines, comments, pending_labels = (), [], []
            continue
        if current is None:
            continue
        if raw.lstrip().startswith("//## File"):
            # nvdisasm prints the full chain, then the outer lines again: keep the longest.
            chain = tuple((f, int(n)) for f, n in _LINE.findall(raw))
            if not comments or len(chain) > len(comments[0]):
                comments.insert(0, chain)
            continue
        label = _LABEL.match(raw.strip())
        if label:
            pending_labels.append(label.group(1))
            continue
        m = _INSTR.match(raw)
        if not m:
            continue
        if comments:  # a line is printed only where it changes
            pending_lines, comments = comments[0], []
        addr = int(m.group(1), 16)
        for name in pending_labels:
            current.labels[name] = addr
        pending_labels = []
        target = _TARGET.search(m.group(3))
        current.instrs.append(Instr(addr, m.group(2), m.group(3), pending_lines,
                                    target.group(1) if target else None))
    return functions


def disassemble(cubin: bytes) -> dict:
    return parse(run_on_cubin("nvdisasm", ["-c", "-gi"], cubin))


# ---- instruction classes ----------------------------------------------------------------

def classify(opcode: str) -> str:
    base = opcode.split(".")[0]
    if base in _TENSOR:
        return "tensor"
    if base in _FP32:
        return "fp32"
    if base in _GLOBAL:
        return "global"
    if base in _SHARED:
        return "shared"
    if base in _LOCAL:
        return "local"
    return "other"


def mma_flops(opcode: str) -> float:
    """FLOPs of one warp's share of a tensor-core instruction."""
    parts = opcode.split(".")
    base = parts[0]
    shape = next((p for p in parts[1:] if re.fullmatch(r"\d+x\d+x\d+", p)), None)
    if base.endswith("GMMA") and shape:  # warpgroup MMA: M x N x K over 4 warps
        m, n, k = (int(v) for v in shape.split("x"))
        return 2.0 * m * n * k / 4
    code = next((p for p in parts[1:] if re.fullmatch(r"\d{3,5}", p)), None)
    if code and len(code) >= 4:  # HMMA.16816 = m16 n8 k16; HMMA.1684 = m16 n8 k4
        m, n, k = int(code[:2]), int(code[2]), int(code[3:])
        return 2.0 * m * n * k
    return 0.0


def gmma_shared_bytes(opcode: str, operands: str) -> float:
    """Shared-memory bytes one warp's share of a warpgroup MMA reads: its B operand always
    comes from shared memory (an smem descriptor, ``gdesc``), and A too when the first
    source is a descriptor rather than registers. M x K and N x K elements, over 4 warps."""
    parts = opcode.split(".")
    shape = next((p for p in parts[1:] if re.fullmatch(r"\d+x\d+x\d+", p)), None)
    if not parts[0].endswith("GMMA") or shape is None:
        return 0.0
    m, n, k = (int(v) for v in shape.split("x"))
    types = set(parts[1:])
    element = 1 if types & {"E4M3", "E5M2", "S8", "U8"} else 4 if "TF32" in types else 2
    sources = [field.strip() for field in operands.split(",")]
    a_in_shared = len(sources) > 1 and sources[1].startswith("gdesc")
    return (n * k + (m * k if a_in_shared else 0)) * element / 4


def access_bytes(opcode: str) -> int:
    """Bytes one warp moves with a shared or local memory instruction."""
    parts = opcode.split(".")
    if parts[0] in ("LDSM", "STSM"):  # ldmatrix / stmatrix: 8x8 16-bit matrices
        count = next((int(p) for p in parts[1:] if p in ("2", "4")), 1)
        return 128 * count
    width = 4
    for p in parts[1:]:
        if p in ("64", "128"):
            width = int(p) // 8
        elif p in ("U8", "S8"):
            width = 1
        elif p in ("U16", "S16"):
            width = 2
    return 32 * width


# ---- source loops -------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceLoop:
    file: str
    start: int  # line of the ``for``
    end: int  # last line of its body
    text: str  # the ``for`` line, stripped


def source_loops(path: str) -> list:
    """Every ``for`` loop of a Python or C/C++ source file with its line range."""
    text = Path(path).read_text()
    lines = text.splitlines()
    loops = []
    if path.endswith(".py"):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.For):
                loops.append(SourceLoop(path, node.lineno, node.end_lineno,
                                        lines[node.lineno - 1].strip()))
        return loops
    code = [line.split("//")[0] for line in lines]  # good enough for these sources
    chars = [(ch, n) for n, line in enumerate(code) for ch in line + "\n"]
    for i, line in enumerate(code):
        match = re.search(r"\bfor\s*\(", line)
        if not match:
            continue
        pos = next(k for k, (_, n) in enumerate(chars) if n == i) + match.end() - 1
        depth, k = 0, pos
        while True:  # the header's closing parenthesis
            depth += {"(": 1, ")": -1}.get(chars[k][0], 0)
            if depth == 0:
                break
            k += 1
        k += 1
        while chars[k][0].isspace():
            k += 1
        if chars[k][0] == "{":  # a braced body
            depth = 0
            while True:
                depth += {"{": 1, "}": -1}.get(chars[k][0], 0)
                if depth == 0:
                    break
                k += 1
        else:  # one statement (possibly itself a loop: take its end)
            depth = 0
            while not (chars[k][0] == ";" and depth == 0):
                depth += {"(": 1, ")": -1, "{": 1, "}": -1}.get(chars[k][0], 0)
                k += 1
        loops.append(SourceLoop(path, i + 1, chars[k][1] + 1, lines[i].strip()))
    return loops


class SourceIndex:
    """The innermost source loop around a (file, line)."""

    def __init__(self):
        self._loops: dict = {}

    def loops(self, file: str) -> list:
        if file not in self._loops:
            self._loops[file] = source_loops(file) if Path(file).exists() else []
        return self._loops[file]

    def innermost(self, file: str, line: int) -> Optional[SourceLoop]:
        inside = [lp for lp in self.loops(file) if lp.start <= line <= lp.end]
        return min(inside, key=lambda lp: lp.end - lp.start) if inside else None

    def chain(self, lines: tuple, body_only: bool = False) -> list:
        """Source loops around an instruction, innermost first, across inlined calls
        (``body_only``: not counting a loop's own header line, whose set-up code runs once
        per entry)."""
        out = []
        first = 1 if body_only else 0
        for file, line in lines:
            for lp in sorted((lp for lp in self.loops(file)
                              if lp.start + first <= line <= lp.end),
                             key=lambda lp: lp.end - lp.start):
                if lp not in out:
                    out.append(lp)
        return out


# ---- SASS loops and dynamic counts --------------------------------------------------------

@dataclass
class SassLoop:
    head: int  # index of the first instruction
    tail: int  # index of the back-edge branch
    source: Optional[SourceLoop] = None
    context: tuple = ()  # the call sites the source loop was inlined through
    children: list = field(default_factory=list)

    @property
    def key(self):
        return (self.source, self.context) if self.source is not None else ("unmapped", self.head)


@dataclass
class Counts:
    """Dynamic warp-instructions of one warp (per class), tensor FLOPs, shared/local bytes."""
    by_class: Counter = field(default_factory=Counter)
    tensor_flops: float = 0.0
    mma_sync_flops: float = 0.0  # the part from warp-level mma.sync (HMMA), slower on Hopper
    shared_bytes: float = 0.0
    local_bytes: float = 0.0
    unresolved: list = field(default_factory=list)

    def add(self, other: "Counts", times: float = 1.0) -> None:
        for k, v in other.by_class.items():
            self.by_class[k] += v * times
        self.tensor_flops += other.tensor_flops * times
        self.mma_sync_flops += other.mma_sync_flops * times
        self.shared_bytes += other.shared_bytes * times
        self.local_bytes += other.local_bytes * times
        for u in other.unresolved:
            if u not in self.unresolved:
                self.unresolved.append(u)

    @property
    def total(self) -> float:
        return sum(self.by_class.values())


def _source_of(fn: Function, index: SourceIndex, lp: "SassLoop") -> Optional[SourceLoop]:
    """The source loop a SASS loop implements: of the source loops around its back-edge
    branch (innermost first), the first that holds most of the loop's instructions.
    (The branch alone can carry the line of the last statement inlined into the body.)"""
    branch = fn.instrs[lp.tail]
    candidates = index.chain(branch.lines)
    if not candidates:
        return None
    body = [index.chain(fn.instrs[k].lines) for k in range(lp.head, lp.tail + 1)]
    for cand in candidates:
        if sum(cand in chain for chain in body) >= 0.75 * len(body):
            return cand
    return candidates[-1]


def find_loops(fn: Function, index: SourceIndex) -> list:
    """Top-level SASS loops of ``fn`` (children nested inside)."""
    addrs = [i.addr for i in fn.instrs]
    heads: dict = {}
    for k, ins in enumerate(fn.instrs):
        if ins.base in _BRANCHES and ins.target in fn.labels:
            target = bisect.bisect_left(addrs, fn.labels[ins.target])
            if target <= k:
                heads[target] = max(heads.get(target, k), k)
    # A branch to itself is the trap after EXIT, not a loop.
    loops = [SassLoop(h, t) for h, t in heads.items() if t > h]
    for lp in loops:
        lp.source = _source_of(fn, index, lp)
        chain = fn.instrs[lp.tail].lines
        inside = [j for j, (f, n) in enumerate(chain)
                  if lp.source and f == lp.source.file and lp.source.start <= n <= lp.source.end]
        lp.context = chain[inside[0] + 1:] if inside else ()
    loops.sort(key=lambda lp: (lp.head, -lp.tail))
    roots: list = []
    stack: list = []
    for lp in loops:
        while stack and not (stack[-1].head <= lp.head and lp.tail <= stack[-1].tail):
            stack.pop()
        (stack[-1].children if stack else roots).append(lp)
        stack.append(lp)
    return roots


def _line_profile(fn: Function, lo: int, hi: int, children: list) -> Counter:
    inner = set()
    for ch in children:
        inner.update(range(ch.head, ch.tail + 1))
    # Work instructions only: integer bookkeeping is merged and hoisted across copies.
    return Counter(fn.instrs[k].lines[0] for k in range(lo, hi + 1)
                   if k not in inner and fn.instrs[k].lines
                   and classify(fn.instrs[k].opcode) != "other")


def _unroll_factors(fn: Function, group: list, peeled: Counter) -> list:
    """Copies of the source loop's body in each SASS loop of a group. A line's count per
    copy is the gcd of its counts over the group's loops and the peeled copies beside them
    (so a loop unrolled 16x next to one unrolled 4x and a single peeled copy gives 16, 4)."""
    profiles = [_line_profile(fn, lp.head, lp.tail, lp.children) for lp in group]
    factors = []
    for prof in profiles:
        ratios = []
        for line, n in prof.items():
            unit = n
            for other in [*profiles, peeled]:
                if other[line]:
                    unit = math.gcd(unit, other[line])
            ratios.append(n / unit)
        factors.append(max(1.0, round(statistics.median(ratios))) if ratios else 1.0)
    return factors


def _skipped(lp: SassLoop, skip: Callable) -> bool:
    """Whether a loop is skipped: its source loop's line with the call sites it was inlined
    through (its own instructions can carry header lines with too short a chain to tell)."""
    return lp.source is not None and skip(((lp.source.file, lp.source.start), *lp.context))


def _region(fn: Function, index: SourceIndex, lo: int, hi: int, children: list,
            here: Optional[SourceLoop], trips: Callable,
            skip: Optional[Callable] = None) -> Counts:
    counts = Counts()
    runs = [ch for ch in children if skip is None or not _skipped(ch, skip)]
    covered = {ch.source for ch in children if ch.source is not None}
    peeled: dict = defaultdict(Counter)  # per child source loop: lines of peeled copies
    inner = set()
    for ch in children:
        inner.update(range(ch.head, ch.tail + 1))
    for k in range(lo, hi + 1):
        if k in inner:
            continue
        ins = fn.instrs[k]
        if skip is not None and skip(ins.lines):
            continue
        loops = index.chain(ins.lines, body_only=True)
        deeper = loops[:loops.index(here)] if here in loops else loops
        hit = next((lp for lp in deeper if lp in covered), None)
        if hit is not None:  # a peeled or unrolled copy of a child loop's body: charged below
            if classify(ins.opcode) != "other":
                peeled[hit][ins.lines[0]] += 1
            continue
        cls = classify(ins.opcode)
        counts.by_class[cls] += 1
        if cls == "tensor":
            counts.tensor_flops += mma_flops(ins.opcode)
            counts.shared_bytes += gmma_shared_bytes(ins.opcode, ins.operands)
            if "GMMA" not in ins.base:
                counts.mma_sync_flops += mma_flops(ins.opcode)
        elif cls == "shared":
            counts.shared_bytes += access_bytes(ins.opcode)
        elif cls == "local":
            counts.local_bytes += access_bytes(ins.opcode)
    groups: dict = defaultdict(list)
    for ch in runs:
        groups[ch.key].append(ch)
    for group in groups.values():
        key = group[0].source or ("unmapped", group[0].head)
        per_iteration = []
        copies = peeled.get(key, Counter()) if isinstance(key, SourceLoop) else Counter()
        for lp, k in zip(group, _unroll_factors(fn, group, copies)):
            body = _region(fn, index, lp.head, lp.tail, lp.children, lp.source, trips, skip)
            scaled = Counts()
            scaled.add(body, 1.0 / k)
            per_iteration.append(scaled)
        worst = max(per_iteration, key=lambda c: c.total)
        n = trips(key) if isinstance(key, SourceLoop) else None
        if n is None:
            where = (f"{Path(key.file).name}:{key.start} '{key.text}'"
                     if isinstance(key, SourceLoop) else f"SASS loop at instruction {key[1]}")
            worst.unresolved.append(f"trip count unknown for {where}; counted once")
            n = 1.0
        counts.add(worst, n)
    return counts


def count(fn: Function, trips: Callable[[SourceLoop], Optional[float]],
          index: Optional[SourceIndex] = None,
          skip: Optional[Callable[[tuple], bool]] = None) -> Counts:
    """Dynamic counts for one warp running ``fn`` once; ``trips(loop)`` gives iterations per
    entry of each source loop (per warp), or None if unknown; ``skip(lines)`` is true for
    instructions (by their source line chain) that do not run in this launch."""
    index = index or SourceIndex()
    return _region(fn, index, 0, len(fn.instrs) - 1, find_loops(fn, index), None, trips, skip)


def static_mix(fn: Function) -> Counter:
    return Counter(classify(i.opcode) for i in fn.instrs)
