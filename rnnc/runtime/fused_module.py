"""The text of the fused module (:mod:`rnnc.runtime.fused_codegen`): its functions, each phase
pruned to what a later one reads, the two loops over time written out with the step inline.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.runtime.fused_codegen import fused_source
    >>> text = fused_source(analyse_source(open("examples/gru.rnn").read()))
    >>> [line.split("(")[0] for line in text.splitlines() if line.startswith("def ")]
    ['def prepare', 'def prologue', 'def forward', 'def linearise', 'def backward', 'def reverse_all']
"""

from __future__ import annotations

from rnnc.runtime.fused_codegen import HEADER, VEC
from rnnc.runtime.fused_reverse import identifiers, prune
from rnnc.runtime.loop_codegen import _pack, _unpack
from rnnc.runtime.loop_writer import CONST, LOOP, SEQ
from rnnc.templates.names import derived


def _indented(lines: list[str]) -> str:
    return "".join("    " + line + "\n" for line in lines)


def _names(packed: str) -> list[str]:
    return [n.strip() for n in packed.strip("()").split(",") if n.strip()]


def module_text(plan, writer, results, step_pass, all_pass, kept: list[tuple[str, str]]) -> str:
    """The module's text; ``results`` are the step's new states' and outputs' variables, the passes
    (lines, return expression) of :func:`rnnc.runtime.fused_reverse.write_reverse`, ``kept`` the
    step pass's variables that the backward keeps for every step and their names in ``reverse_all``.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.fused_codegen import forward_writer
        >>> from rnnc.runtime.fused_reverse import write_reverse
        >>> plan = analyse_source(open("examples/elman.rnn").read())
        >>> writer, results = forward_writer(plan)
        >>> step, all_steps = write_reverse(writer, "step"), write_reverse(writer, "all", {"R @ h": "cot_t4"})
        >>> text = module_text(plan, writer, results, step[:2], all_steps[:2], [(step[2]["R @ h"], "cot_t4")])
        >>> [line for line in text.splitlines() if line.startswith("ALL_CARRIES")]
        ['ALL_CARRIES = ()']
    """
    ir = plan.ir
    passes_read = set()
    for lines, returns in (step_pass, all_pass):
        passes_read |= identifiers(returns).union(*(identifiers(line) for line in lines))
    backward = [v for v in writer.backward_reads if v in passes_read]
    rows = [v for v in backward if writer.vec_rows[v]]
    fixed = [v for v in backward if writer.vec_rows[v] is False]
    step_read = identifiers(step_pass[1]).union(*(identifiers(line) for line in step_pass[0]))
    step_rows = [i for i, v in enumerate(rows) if v in step_read]
    vec_lines = prune(writer.lines[VEC], set(backward))
    vec_read = set(backward).union(*(identifiers(line) for line in vec_lines))
    saved = [v for v in writer.saved if v in vec_read]
    states = [writer.atom_var[d.name] for d in ir.states]
    news = [derived("u", user=d.name) for d in ir.states]
    vec_states = [i for i, v in enumerate(states) if v in vec_read]
    vec_news = [i for i, v in enumerate(news) if v in vec_read]
    loop_lines = prune(writer.lines[LOOP], {*results[0], *results[1], *saved})
    loop_read = {*results[0], *results[1], *saved}.union(*(identifiers(line) for line in loop_lines))
    step_seqs = [v for v in writer.exports[SEQ] if v in loop_read]
    back_seqs = [v for v in writer.vec_exports[SEQ] if v in vec_read]
    seq_lines = prune(writer.lines[SEQ], {*step_seqs, *back_seqs})
    read = passes_read | vec_read | loop_read
    read = read.union(*(identifiers(line) for line in seq_lines))
    consts = [v for v in dict.fromkeys([*writer.exports[CONST], *writer.vec_exports[CONST]]) if v in read]
    const_lines = prune(writer.lines[CONST], set(consts))
    all_read = identifiers(all_pass[1]).union(*(identifiers(line) for line in all_pass[0]))
    carries = [i for i, d in enumerate(ir.states) if derived("carry", user=d.name) in all_read]
    all_rows = [i for i, v in enumerate(rows) if v in all_read]
    all_douts = [i for i, o in enumerate(ir.outputs) if derived("dout", user=o.name) in all_read]
    kept = [(step, var) for step, var in kept if var in all_read]
    text = HEADER.format(cell=ir.cell, key=plan.key())
    text += f"# linearise reads the previous states {tuple(vec_states)} and the new states {tuple(vec_news)}\n"
    text += f"LINEARISE_STATES = {tuple(vec_states)!r}\nLINEARISE_NEWS = {tuple(vec_news)!r}\n"
    text += f"# the rows of linearise that backward reads, one step at a time\nSTEP_ROWS = {tuple(step_rows)!r}\n"
    text += f"# the states whose carries into every step reverse_all reads\nALL_CARRIES = {tuple(carries)!r}\n"
    text += "# the rows of linearise and the outputs' cotangents that reverse_all reads\n"
    text += f"ALL_ROWS = {tuple(all_rows)!r}\nALL_DOUTS = {tuple(all_douts)!r}\n\n"
    text += "\ndef prepare(weights, sizes, like):\n" + "".join(line + "\n" for line in const_lines)
    text += f"    return {_pack(consts)}\n\n\n"
    text += "def prologue(inputs, consts, like):\n" + _unpack(consts, "consts")
    text += "".join(line + "\n" for line in seq_lines)
    text += f"    return {_pack(step_seqs)}, {_pack(back_seqs)}\n\n\n"
    text += _forward(ir, consts, step_seqs, states, loop_lines, results, saved)
    text += "def linearise(consts, seqs, states, news, saved, batch, like):\n"
    text += "    # every step at once: batch is B * T rows\n"
    text += _unpack(consts, "consts") + _unpack(back_seqs, "seqs")
    text += _unpack([states[i] for i in vec_states], "states") + _unpack([news[i] for i in vec_news], "news")
    text += _unpack(saved, "saved") + "".join(line + "\n" for line in vec_lines)
    text += f"    return {_pack(rows)}, {_pack(fixed)}\n\n\n"
    text += _backward(ir, consts, [rows[i] for i in step_rows], fixed, step_pass, carries, [s for s, _ in kept])
    text += "def reverse_all(consts, rows, fixed, carry, dout, kept, batch, like):\n"
    text += "    # every step at once: the cotangents of the inputs and the weights (kept: what the\n"
    text += "    # backward kept of every step, the cotangents of its weight @ state GEMMs)\n"
    text += _unpack(consts, "consts") + _unpack(rows, "rows") + _unpack(fixed, "fixed")
    text += _unpack([derived("carry", user=ir.states[i].name) for i in carries], "carry")
    text += _unpack([derived("dout", user=o.name) for o in ir.outputs], "dout") + _unpack([v for _, v in kept], "kept")
    text += "".join(line + "\n" for line in all_pass[0])
    text += f"    return {all_pass[1]}\n"
    return text


def _forward(ir, consts, seqs, states, lines, results, saved) -> str:
    text = "def forward(consts, seqs, states, steps, batch, like):\n"
    text += "    # the loop over time, no tape: seqs hold per-step values; returns every step's states\n"
    text += "    # (the given ones first), every step's saved values and every output's per-step values\n"
    text += _unpack(consts, "consts") + _unpack([f"seq{i}" for i in range(len(seqs))], "seqs")
    text += _unpack(states, "states")
    text += "    history = [states]\n    saved = []\n"
    text += "".join(f"    out{i} = []\n" for i in range(len(ir.outputs)))
    text += "    for t in range(steps):\n"
    text += _indented([f"    {var} = seq{i}[t]" for i, var in enumerate(seqs)] + lines)
    text += f"        {', '.join(states)} = {', '.join(results[0])}\n" if states else ""
    text += f"        history.append({_pack(results[0])})\n        saved.append({_pack(saved)})\n"
    text += "".join(f"        out{i}.append({var})\n" for i, var in enumerate(results[1]))
    outs = _pack([f"out{i}" for i in range(len(ir.outputs))])
    return text + f"    return history, saved, {outs}\n\n\n"


def _backward(ir, consts, rows, fixed, step_pass, carries: list[int], kept: list[str]) -> str:
    carry = [derived("carry", user=d.name) for d in ir.states]
    dout = [derived("dout", user=o.name) for o in ir.outputs]
    returns = _names(step_pass[1])
    text = "def backward(consts, rows, fixed, carry, douts, steps, batch, like):\n"
    text += "    # the loop over time in reverse, along the states only: from the cotangents of the\n"
    text += "    # final states (carry) and of every step's outputs (per-step values) to those of the\n"
    text += "    # initial states; returns them, the carry into every step (the new states' cotangents) of\n"
    text += "    # the states in ALL_CARRIES and every step's values of the variables reverse_all reads (kept)\n"
    text += _unpack(consts, "consts") + _unpack(fixed, "fixed")
    text += _unpack([f"row{i}" for i in range(len(rows))], "rows")
    text += _unpack([f"dout{i}" for i in range(len(dout))], "douts") + _unpack(carry, "carry")
    zero = {}
    for var, name in zip(returns, carry):
        if var == "None":  # no path from the new state back to the previous one
            zero[name] = f"zero{len(zero)}"
            text += f"    {zero[name]} = torch.zeros_like({name})\n"
    text += "    carries = [None] * steps\n" + "".join(f"    kept{i} = [None] * steps\n" for i in range(len(kept)))
    text += "    for t in range(steps - 1, -1, -1):\n"
    body = [f"    carries[t] = {_pack([carry[i] for i in carries])}" if carries else "    carries[t] = ()"]
    body += [f"    {var} = row{i}[t]" for i, var in enumerate(rows)]
    body += [f"    {var} = dout{i}[t]" for i, var in enumerate(dout)] + step_pass[0]
    body += [f"    kept{i}[t] = {var}" for i, var in enumerate(kept)]
    text += _indented(body)
    if carry:
        text += f"        {', '.join(carry)} = {', '.join(zero.get(c, r) for r, c in zip(returns, carry))}\n"
    return text + f"    return {_pack(carry)}, carries, {_pack([f'kept{i}' for i in range(len(kept))])}\n\n\n"
