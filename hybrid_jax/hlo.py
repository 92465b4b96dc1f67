"""What a compiled program holds, read from the compiler's own reports and its optimised HLO text.

``memory`` and ``cost`` are XLA's memory and cost analyses (per device, for an SPMD program);
``collectives``, ``while_loops`` and ``matmul_dtypes`` parse ``compiled.as_text()``; ``audit``
checks the properties an accelerator program of this project must have (``plan``, tests).

HLO text lines look like ``%name = bf16[8,128]{1,0:T(8,128)(2,1)} op(%a, %b), attrs...``; a
tuple-shaped result is ``(shape, shape, ...)``. On TPU, dots are lowered to ``convolution``.
Counts are static (an op inside a loop body is counted once).
"""
from __future__ import annotations

import collections
import functools
import re
from typing import NamedTuple

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
# Named scopes of the CPU-only kernels (shifted-sum depthwise, per-example kernel-gradient loops):
# an accelerator program must contain no op from them. (Source files cannot tell: ops traced in a
# custom_vjp rule carry the caller's source location.)
CPU_KERNEL_SCOPES = ("cpu_kernel_shifted_depthwise", "cpu_kernel_pointwise", "cpu_kernel_per_example_loop")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")
_HEAD = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPCODE = re.compile(r" ([a-z][a-z0-9\-]*)\(")
_OPERAND = re.compile(r"%([\w.\-]+)")


class Instruction(NamedTuple):
    """One HLO instruction: its name, result arrays [(dtype, dims)], opcode, operand names, line."""

    name: str
    arrays: list
    op: str
    operands: list
    line: str

    @property
    def op_name(self) -> str:
        """The JAX op path it was traced from (metadata ``op_name``), or ""."""
        match = _OP_NAME.search(self.line)
        return match.group(1) if match else ""


@functools.lru_cache(maxsize=2)
def instructions(text: str) -> tuple[Instruction, ...]:
    """Every instruction of every computation in an HLO module's text (cached: the checks below
    all read the same, often 10-100 MB, text)."""
    out = []
    for line in text.splitlines():
        head = _HEAD.match(line)
        if not head:
            continue
        # The opcode is the first " word(" after the result shape (layouts' "T(8,128)" follow a
        # colon, tuple elements a comma and a space, never a lowercase word and a parenthesis).
        op = _OPCODE.search(line, head.end())
        if not op:
            continue
        args = line[op.end():line.find(")", op.end())]
        arrays = [(dt, tuple(int(d) for d in dims.split(",") if d))
                  for dt, dims in _ARRAY.findall(line, head.end(), op.start())]
        out.append(Instruction(head.group(1), arrays, op.group(1), _OPERAND.findall(args), line))
    return tuple(out)


def nbytes(arrays) -> int:
    total = 0
    for dtype, dims in arrays:
        count = 1
        for d in dims:
            count *= d
        total += count * DTYPE_BYTES.get(dtype, 4)
    return total


def cost(compiled) -> dict:
    """XLA's cost analysis of the compiled program (per device): flops, bytes accessed, and on TPU
    the cost model's ``optimal_seconds``."""
    stats = compiled.cost_analysis()
    if isinstance(stats, (list, tuple)):  # older JAX: one dict per program
        stats = stats[0] if stats else {}
    return dict(stats or {})


def memory(compiled) -> dict:
    """Per-device memory of the compiled program, with the peak estimate
    arguments + outputs - aliased (donated) + temporaries."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "generated_code_size_in_bytes")
    out = {f: int(getattr(stats, f, 0) or 0) for f in fields}
    out["peak_bytes_estimate"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                  - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


def _collective_bytes(kind: str, op: str, arrays) -> int:
    if not op.endswith("-start") or len(arrays) < 2:
        return nbytes(arrays)
    if kind == "collective-permute":  # (input, output, context...)
        return nbytes(arrays[1:2])
    if kind == "all-gather":  # (inputs..., outputs...)
        return nbytes(arrays[len(arrays) // 2:])
    return nbytes(arrays)


def collectives(text: str) -> list[dict]:
    """[{"kind", "count", "bytes"}] of the collectives in the program (result bytes per device;
    an async pair is counted once, at its start)."""
    count, size = collections.Counter(), collections.Counter()
    for ins in instructions(text):
        kind = ins.op[:-len("-start")] if ins.op.endswith("-start") else ins.op
        if kind in COLLECTIVES:
            count[kind] += 1
            size[kind] += _collective_bytes(kind, ins.op, ins.arrays)
    return [{"kind": k, "count": count[k], "bytes": size[k]} for k in COLLECTIVES if count[k]]


def while_loops(text: str) -> list[str]:
    """The JAX op path of every ``while`` loop (scans, fori loops, the ring loss's loop)."""
    return [ins.op_name for ins in instructions(text) if ins.op == "while"]


def matmul_dtypes(text: str) -> list[dict]:
    """Dots and convolutions grouped by (op, operand dtypes, op path with numbers as N):
    [{"op", "operands", "op_name", "count"}], most frequent first."""
    dtypes, groups = {}, collections.Counter()
    parsed = list(instructions(text))
    for ins in parsed:
        if ins.arrays:
            dtypes[ins.name] = ins.arrays[0][0]
    for ins in parsed:
        if ins.op in ("dot", "convolution"):
            operands = tuple(dtypes.get(o, "?") for o in ins.operands)
            groups[(ins.op, operands, re.sub(r"\d+", "N", ins.op_name))] += 1
    return [{"op": op, "operands": list(operands), "op_name": name, "count": n}
            for (op, operands, name), n in groups.most_common()]


def logit_arrays(parsed, global_batch: int, local_batch: int) -> list[str]:
    """Instructions holding a [global_batch, global_batch] or [local_batch, global_batch] array:
    a device's rows of the logits against every item of the batch."""
    out = []
    for ins in parsed:
        for _, dims in ins.arrays:
            dims = list(dims)
            if global_batch in dims:
                dims.remove(global_batch)
                if global_batch in dims or local_batch in dims:
                    out.append(f"{ins.name} {ins.op} {ins.op_name}")
                    break
    return out


# Dots/convolutions that stay float32 in a bfloat16 program, on purpose: the log-mel front end
# (STFT, by FFT or DFT matmul, and mel matrix: the spectrum's dynamic range), the contrastive
# loss and its ring (logits divided by a temperature of 0.05), the projections into the
# retrieval space and the SE gates (float32 pooled inputs), and attention-score gradients
# (softmax in float32).
FLOAT32_ALLOWED = (r"jit\(fft\)", r"audio_tower/btn,nk->btk", r"audio_tower/mk,btk->bmt",
                   r"shard_map", r"losses", r"_proj/", r"conc_se_layers",
                   r"attention/self/btnh,bsnh->bnts", r"logits")


# FSDP gathers each parameter once per use: the forward, the backward, a remat replay, GradCache's
# second pass. More all-gather traffic than that is activations (which grow with the batch).
GATHER_LIMIT = 4


def audit(text: str, *, dtype: str, global_batch: int | None = None, local_batch: int | None = None,
          param_bytes: int | None = None) -> list[str]:
    """Problems of an accelerator program (empty if none): ops from the CPU-only kernels;
    float32 dots/convolutions outside ``FLOAT32_ALLOWED`` when ``dtype`` is bfloat16; with
    ``global_batch`` (and the per-device ``local_batch``), logits of a device's queries against
    the whole batch (which a ring loss never holds: it sees [local, local] blocks); with
    ``param_bytes`` (the whole parameters' size), all-gathers that move more than
    ``GATHER_LIMIT`` times it per device, i.e. activations gathered under FSDP."""
    parsed = instructions(text)
    kernel_ops = collections.Counter(scope for ins in parsed for scope in CPU_KERNEL_SCOPES
                                     if scope in ins.op_name)
    problems = [f"{n} ops of the CPU-only kernel {scope}" for scope, n in kernel_ops.items()]
    problems += [f"per-example while loop: {ins.op_name}" for ins in parsed
                 if ins.op == "while" and "cpu_kernel" in ins.op_name]
    if dtype == "bfloat16":
        for group in matmul_dtypes(text):
            if "f32" in group["operands"] and not any(re.search(p, group["op_name"]) for p in FLOAT32_ALLOWED):
                problems.append(f"float32 {group['op']} x{group['count']} ({group['operands']}): {group['op_name']}")
    if global_batch:
        problems += [f"[{local_batch or global_batch} or {global_batch}, {global_batch}] logits: {s}"
                     for s in logit_arrays(parsed, global_batch, local_batch or global_batch)]
    if param_bytes:
        moved = sum(c["bytes"] for c in collectives(text) if c["kind"] == "all-gather")
        if moved > GATHER_LIMIT * param_bytes:
            problems.append(f"all-gathers move {moved / 1e6:.1f} MB per device, more than {GATHER_LIMIT} x "
                            f"the parameters' {param_bytes / 1e6:.1f} MB: activations are gathered")
    return problems


# Per-op breakdown: where a step's time goes, by a roofline per scheduled op.
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_LHS_DILATE = re.compile(r"lhs_dilate=([\dx]+)")
# A copy-start's result is (destination, source, context). Its destination in memory space 1
# (``...S(1)}``: the TPU's on-chip memory) is a prefetch that reads HBM once and writes nothing
# there; counting the tuple would charge the array three times.
_ALTERNATE_MEMORY = re.compile(r"[a-z0-9]+\[[\d,]*\]\{[^}]*S\(1\)\}")
_SKIP_BYTES = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while",
               "conditional", "call", "copy-done", "all-gather-done", "all-reduce-done",
               "collective-permute-done", "async-done")


def _elements(dims) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def matmul_flops(ins: Instruction, shapes: dict) -> float:
    """FLOPs of a dot or convolution (2 per multiply-add) from its shapes."""
    if not ins.arrays:
        return 0.0
    out = _elements(ins.arrays[0][1])
    if ins.op == "dot":
        lhs = shapes.get(ins.operands[0]) if ins.operands else None
        match = _CONTRACTING.search(ins.line)
        if lhs is None or not match:
            return 0.0
        return 2.0 * out * _elements(lhs[int(i)] for i in match.group(1).split(",") if i)
    labels = _DIM_LABELS.search(ins.line)
    kernel = shapes.get(ins.operands[1]) if len(ins.operands) > 1 else None
    if not labels or kernel is None:
        return 0.0
    kernel_labels = labels.group(2)  # e.g. "01io": spatial dims, input and output features
    # A base-dilated window (XLA's TPU form of a batched dot, e.g. per-example weights: size=96,
    # lhs_dilate=96) meets real input in only ceil(size / dilation) of its taps; the rest are the
    # inserted zeros, which cost nothing.
    dilate = _LHS_DILATE.search(ins.line)
    dilation = [int(d) for d in dilate.group(1).split("x")] if dilate else []
    per_output = 1
    for size, label in zip(kernel, kernel_labels):
        if label.isdigit() and int(label) < len(dilation):
            per_output *= -(-size // dilation[int(label)])
        elif label != "o":
            per_output *= size
    return 2.0 * out * per_output


def op_costs(text: str) -> list[dict]:
    """Every scheduled op (outside fused computations) with its FLOPs (dots/convolutions inside
    it) and the bytes it reads and writes at its boundary: [{"name", "op", "op_name", "flops",
    "bytes"}]. Ops in loop bodies are counted once."""
    parsed = instructions(text)
    shapes = {ins.name: ins.arrays[0][1] for ins in parsed if ins.arrays}
    sizes = {ins.name: nbytes(ins.arrays) for ins in parsed}
    by_name = {ins.name: ins for ins in parsed}
    fused, members, current = set(), collections.defaultdict(list), None
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = head.group(1)
            continue
        ins = _HEAD.match(line)
        if ins and current:
            members[current].append(ins.group(1))
    for ins in parsed:
        if ins.op in ("fusion",) or ins.op.endswith("-start") or ins.op == "async-start":
            fused.update(_CALLS.findall(ins.line))

    def flops_of(computation: str, seen=()) -> float:
        total = 0.0
        for name in members.get(computation, []):
            ins = by_name.get(name)
            if ins is None:
                continue
            if ins.op in ("dot", "convolution"):
                total += matmul_flops(ins, shapes)
            elif ins.op == "fusion":
                total += sum(flops_of(c, seen + (computation,)) for c in _CALLS.findall(ins.line)
                             if c not in seen)
        return total

    out = []
    for computation, names in members.items():
        if computation in fused:
            continue
        for name in names:
            ins = by_name.get(name)
            if ins is None or ins.op in _SKIP_BYTES:
                continue
            if ins.op in ("dot", "convolution"):
                flops = matmul_flops(ins, shapes)
            elif ins.op == "fusion":
                flops = sum(flops_of(c) for c in _CALLS.findall(ins.line))
            else:
                flops = 0.0
            moved = sum(sizes.get(o, 0) for o in ins.operands)
            if ins.op != "copy-start":
                moved += sizes.get(name, 0)
            elif ins.arrays and not _ALTERNATE_MEMORY.match(ins.line, ins.line.find("= (") + 3):
                moved += nbytes(ins.arrays[:1])  # an HBM-to-HBM copy also writes its result
            out.append({"name": name, "op": ins.op, "op_name": ins.op_name, "flops": flops,
                        "bytes": moved})
    return out


def component(op_name: str, depth: int = 3) -> str:
    """A model part from an op path: "jvp(RetrievalModel.embed_items)/audio_tower/mobilenet/
    mobilenet.feature_maps/features_3/block_1/..." -> "fwd audio_tower/mobilenet/features_3"."""
    if not op_name:
        return "(no op path)"
    direction = "bwd" if "transpose(" in op_name else "fwd"
    parts = [p for i, p in enumerate(op_name.split("/"))
             if p and not (i == 0 and p.startswith("jit(")) and not p.startswith(("jvp(", "transpose("))
             and "." not in p.split("(")[0] and p not in ("while", "body", "eval_jaxpr")]
    return f"{direction} {'/'.join(parts[:depth]) or op_name.split('/')[-1]}"


def breakdown(text: str, peak_flops: float, hbm_bytes_per_s: float, depth: int = 3) -> list[dict]:
    """Roofline time per model part: each scheduled op takes max(FLOPs / peak, bytes / HBM
    bandwidth); summed by ``component``. [{"part", "ops", "flops", "bytes", "roofline_s",
    "bound"}], largest time first. A model of our own (not XLA's cost model): it ignores overlap
    of ops, on-chip reuse across ops and the MXU's padding of small dimensions."""
    parts = collections.defaultdict(lambda: {"ops": 0, "flops": 0.0, "bytes": 0, "roofline_s": 0.0,
                                             "compute_s": 0.0})
    for cost_ in op_costs(text):
        part = parts[component(cost_["op_name"], depth)]
        compute, memory_ = cost_["flops"] / peak_flops, cost_["bytes"] / hbm_bytes_per_s
        part["ops"] += 1
        part["flops"] += cost_["flops"]
        part["bytes"] += cost_["bytes"]
        part["roofline_s"] += max(compute, memory_)
        part["compute_s"] += compute if compute >= memory_ else 0.0
    rows = [{"part": name, **values,
             "bound": "compute" if values["compute_s"] >= values["roofline_s"] / 2 else "memory"}
            for name, values in parts.items()]
    for row in rows:
        del row["compute_s"]
    return sorted(rows, key=lambda r: -r["roofline_s"])
