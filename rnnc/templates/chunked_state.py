"""The chunked kernels' lines for one linear state: its rows, its chunk forward, and the chunk's backward.

State ``j`` (tile ``st<j>``, ``[BK, BV]``, or ``[BK, BU]`` for a vector state with its one value column
padded to BU) over the rows of a chunk (``CHUNK`` = ``STEPS * N_SUB`` rows):

    rows      lam (log decays, floored), W and U (the correction's query and scaled key), A_w and
              B_w (each write's scaled key and value), qr<k> (each read's query at its row)
    forward   X  = (I - P(W, U))^-1 (Wd S + sum_w P(W, A_w) B_w)      (corrections: the UT form)
              Y_k = Qd_k S + P(q_k, U) X + sum_w P(q_k, A_w) B_w       (reads, old or new state)
              S' = exp(last) S + Ud^T X + sum_w Ad_w^T B_w
    backward  the adjoint of each line above, the decays' cotangents as direct sums

``P(q, a)`` are the decayed causal scores (strict for the old state and for corrections),
``Qd``, ``Wd``, ``Ud``, ``Ad`` the tiles decayed from the chunk's start or to its end.

Example:
    >>> decayed("s0", "x", "through", "scalar")
    'x * tl.exp(s0_through)[:, None]'
"""

from __future__ import annotations

from rnnc.templates.chunked_lines import StepLines
from rnnc.templates.chunked_spec import StateRows

DOTS = "DOT_DTYPE, DOT_PRECISION, COMPUTE"


def decayed(prefix: str, tile: str, which: str, decay: str) -> str:
    """``tile`` times ``exp`` of one of the chunk's decay sums (``through``, ``before``, ``to_end``)."""
    if decay == "identity":
        return tile
    if decay == "scalar":
        return f"{tile} * tl.exp({prefix}_{which})[:, None]"
    return f"{tile} * tl.exp({prefix}_{which})"


def _row_sum(tile: str, decay: str) -> str:
    """A [CHUNK, BK] product as the cotangent of a decay sum: summed over k for a scalar decay."""
    return f"tl.sum({tile}, axis=1)" if decay == "scalar" else tile


class StateLines:
    """The lines of state ``j`` of a spec."""

    def __init__(self, steps: StepLines, j: int):
        self.steps = steps
        self.spec = steps.spec
        self.j = j
        self.state: StateRows = self.spec.states[j]
        self.p = f"s{j}"
        self.n_sub = self.spec.n_sub
        self.last_row = self.n_sub - 1
        self.reads = [(k, r) for k, r in enumerate(self.spec.reads) if r.state == self.state.name]
        self.width = "BU" if self.state.vector else "BV"

    # --- rows -------------------------------------------------------------------------------
    def _place(self, tiles: list[str], vector: bool = False) -> str:
        """Per-step tiles of each sub-row (in order) interleaved into the chunk's rows."""
        if self.n_sub == 1:
            return tiles[0]
        helper = {2: "_rows2", 4: "_rows4"}[self.n_sub] + ("v" if vector else "")
        return f"{helper}({', '.join(tiles)})"

    def _at(self, tile: str, sub: int, zero: str, vector: bool = False) -> str:
        return self._place([tile if f == sub else zero for f in range(self.n_sub)], vector)

    def _from(self, rows: str, sub: int, vector: bool = False) -> str:
        if self.n_sub == 1:
            return rows
        return f"_from_rows{'v' if vector else ''}({rows}, {sub}, N_SUB)"

    def row_lines(self) -> list[str]:
        """The state's rows for this chunk."""
        s, p, lines = self.state, self.p, []
        if s.decay != "identity":
            tiles = []
            for f, step in enumerate(s.steps):
                if step.log_decay is None:
                    tiles.append("zero_key" if s.decay == "diagonal" else "zero_sc")
                elif step.decay == "scalar" and s.decay == "diagonal":
                    tiles.append(f"({p}_lam{f}[:, None] + zero_key)")
                else:
                    tiles.append(f"{p}_lam{f}")
            lines.append(f"{p}_lam_raw = {self._place(tiles, vector=s.decay == 'scalar')}")
            lines.append(f"{p}_lam = tl.where({p}_lam_raw < FLOOR, FLOOR, {p}_lam_raw)  # exp is 0 below: a reset")
        if s.corrected:
            w = [f"{p}_w{f}" if st.correction else "zero_key" for f, st in enumerate(s.steps)]
            u = [f"{p}_c{f}[:, None] * {p}_u{f}" if st.correction else "zero_key" for f, st in enumerate(s.steps)]
            lines += [f"{p}_W = {self._place(w)}", f"{p}_U = {self._place(u)}"]
        for w, (row, _, _, value) in enumerate(s.writes):
            lines.append(f"{p}_A{w} = {self._at(f'{p}_scale{w}[:, None] * {p}_key{w}', row, 'zero_key')}")
            if value is None:
                lines.append(f"{p}_B{w} = ones_unit")
            else:
                lines.append(f"{p}_B{w} = {self._at(f'{p}_val{w}', row, 'zero_val')}")
        for k, r in self.reads:
            lines.append(f"qr{k} = {self._at(f'q{k}', self.last_row if r.new else 0, 'zero_key')}")
        return lines

    # --- the chunk's forward ------------------------------------------------------------------
    def _scores(self, query: str, key: str, strict: bool) -> str:
        s, p = self.state, self.p
        flag = "True" if strict else "False"
        if s.decay == "diagonal":
            return f"_diagonal_scores({query}, {key}, {p}_lam, CHUNK, {flag})"
        if s.decay == "scalar":
            factor = f"{p}_fs" if strict else f"{p}_fi"
            return f"_scores({query}, {key}, {factor}, CHUNK, {flag}, True, {DOTS})"
        return f"_scores({query}, {key}, 0.0, CHUNK, {flag}, False, {DOTS})"

    def _query_decay(self, strict: bool) -> str:
        return "before" if strict else "through"

    def recompute_lines(self) -> list[str]:
        """Everything of the chunk's forward up to the reads (the state tile is the chunk's start)."""
        s, p, lines = self.state, self.p, []
        if s.decay != "identity":
            lines.append(f"{p}_through, {p}_before, {p}_to_end, {p}_last = _decay_sums({p}_lam)")
        if s.decay == "scalar":
            strict_needed = s.corrected or any(not r.new for _, r in self.reads)
            if strict_needed:
                lines.append(f"{p}_fs = _pair_factor({p}_lam, {p}_through, CHUNK, True)")
            if any(r.new for _, r in self.reads):
                lines.append(f"{p}_fi = _pair_factor({p}_lam, {p}_through, CHUNK, False)")
        st = f"st{self.j}"
        if s.corrected:
            lines.append(f"{p}_M = {self._scores(f'{p}_W', f'{p}_U', True)}")
            lines.append(f"{p}_T = _unit_lower_inverse({p}_M, CHUNK)")
            lines.append(f"{p}_Wd = {decayed(p, f'{p}_W', 'before', s.decay)}")
            rhs = f"_dot({p}_Wd, {st}, {DOTS})"
            for w in range(len(s.writes)):
                lines.append(f"{p}_Mw{w} = {self._scores(f'{p}_W', f'{p}_A{w}', True)}")
                rhs += f" + _causal_dot({p}_Mw{w}, {p}_B{w}, True, {DOTS})"
            lines.append(f"{p}_R = {rhs}")
            lines.append(f"{p}_X = _causal_dot({p}_T, {p}_R, False, {DOTS})")
        for k, r in self.reads:
            strict = not r.new
            flag = "True" if strict else "False"
            lines.append(f"qd{k} = {decayed(p, f'qr{k}', self._query_decay(strict), s.decay)}")
            y = f"_dot(qd{k}, {st}, {DOTS})"
            if s.corrected:
                lines.append(f"{p}_P{k}u = {self._scores(f'qr{k}', f'{p}_U', strict)}")
                y += f" + _causal_dot({p}_P{k}u, {p}_X, {flag}, {DOTS})"
            for w in range(len(s.writes)):
                lines.append(f"{p}_P{k}w{w} = {self._scores(f'qr{k}', f'{p}_A{w}', strict)}")
                y += f" + _causal_dot({p}_P{k}w{w}, {p}_B{w}, {flag}, {DOTS})"
            lines.append(f"yr{k} = {y}")
            steps = self._from(f"yr{k}", self.last_row if r.new else 0)
            if s.vector:
                steps = f"tl.sum(tl.where(uu[None, :] == 0, {steps}, 0.0), axis=1)"
            lines.append(f"y{k} = {steps}")
        return lines

    def end_lines(self) -> list[str]:
        """The entries decayed to the chunk's end (what the state after it receives)."""
        s, p, lines = self.state, self.p, []
        if s.corrected:
            lines.append(f"{p}_Ud = {decayed(p, f'{p}_U', 'to_end', s.decay)}")
        for w in range(len(s.writes)):
            lines.append(f"{p}_Ad{w} = {decayed(p, f'{p}_A{w}', 'to_end', s.decay)}")
        return lines

    def advance_lines(self) -> list[str]:
        """The state after the chunk."""
        s, p = self.state, self.p
        st = f"st{self.j}"
        if s.decay == "identity":
            new = st
        else:
            new = f"tl.exp({p}_last) * {st}" if s.decay == "scalar" else f"tl.exp({p}_last)[:, None] * {st}"
        if s.corrected:
            new += f" + _dot(tl.trans({p}_Ud), {p}_X, {DOTS})"
        for w in range(len(s.writes)):
            new += f" + _dot(tl.trans({p}_Ad{w}), {p}_B{w}, {DOTS})"
        return [*self.end_lines(), f"{st} = {new}"]

    # --- the chunk's backward -----------------------------------------------------------------
    def backward_lines(self) -> list[str]:
        """Cotangents of the rows and of the chunk's starting state from those of its reads and end state.

        Reads ``dy<k>`` (per step) and ``dst<j>`` (the state after the chunk); leaves ``dst<j>`` as the
        cotangent of the state before the chunk and ``d_<piece>`` for each of the state's pieces.
        """
        s, p, j = self.state, self.p, self.j
        st, dst = f"st{j}", f"dst{j}"
        diag, scalar = s.decay == "diagonal", s.decay == "scalar"
        lines = []
        zero_rows = "rzero_key"
        for k, r in self.reads:
            tile = f"tl.where(uu[None, :] == 0, dy{k}[:, None], 0.0)" if s.vector else f"dy{k}"
            zero = "zero_unit" if s.vector else "zero_val"
            lines.append(f"dyr{k} = {self._at(tile, self.last_row if r.new else 0, zero)}")
        if s.decay == "identity":
            lines.append(f"{p}_ds0 = {dst}")
        else:
            lines.append(
                f"{p}_ds0 = {'tl.exp(' + p + '_last)' if scalar else 'tl.exp(' + p + '_last)[:, None]'} * {dst}"
            )
            last = f"tl.sum({st} * {dst})" if scalar else f"tl.sum({st} * {dst}, axis=1)"
            lines.append(f"{p}_dlast = {last} * tl.exp({p}_last)")
            sums = "rzero_sc" if scalar else "rzero_key"
            lines += [f"{p}_dthrough = {sums}", f"{p}_dbefore = {sums}", f"{p}_dto_end = {sums}"]
            if scalar:
                lines += [f"{p}_wi = rzero_pairs", f"{p}_ws = rzero_pairs"]
            else:
                lines.append(f"{p}_dpairs = rzero_key")
        for w in range(len(s.writes)):
            lines += self._entry_end_backward(f"{p}_B{w}", f"{p}_A{w}", f"{p}_Ad{w}")
        if s.corrected:
            lines += self._entry_end_backward(f"{p}_X", f"{p}_U", f"{p}_Ud")
            lines.append(f"{p}_dW = {zero_rows}")
        for k, r in self.reads:
            strict = not r.new
            which = self._query_decay(strict)
            lines.append(f"dqd{k} = _dot(dyr{k}, tl.trans({st}), {DOTS})")
            lines.append(f"dqr{k} = {decayed(p, f'dqd{k}', which, s.decay)}")
            if s.decay != "identity":
                lines.append(f"{p}_d{which} += {_row_sum(f'qd{k} * dqd{k}', s.decay)}")
            lines.append(f"{p}_ds0 += _dot(tl.trans(qd{k}), dyr{k}, {DOTS})")
            if s.corrected:
                lines.append(f"{p}_dX += _dot(tl.trans({p}_P{k}u), dyr{k}, {DOTS})")
                lines += self._scores_backward(
                    f"_dot(dyr{k}, tl.trans({p}_X), {DOTS})", f"qr{k}", f"{p}_U", strict, f"dqr{k}", f"{p}_dU"
                )
            for w in range(len(s.writes)):
                lines.append(f"{p}_dB{w} += _dot(tl.trans({p}_P{k}w{w}), dyr{k}, {DOTS})")
                lines += self._scores_backward(
                    f"_dot(dyr{k}, tl.trans({p}_B{w}), {DOTS})", f"qr{k}", f"{p}_A{w}", strict, f"dqr{k}", f"{p}_dA{w}"
                )
        if s.corrected:
            lines.append(f"{p}_dR = _dot(tl.trans({p}_T), {p}_dX, {DOTS})")
            lines.append(f"{p}_dWd = _dot({p}_dR, tl.trans({st}), {DOTS})")
            lines.append(f"{p}_dW += {decayed(p, f'{p}_dWd', 'before', s.decay)}")
            if s.decay != "identity":
                lines.append(f"{p}_dbefore += {_row_sum(f'{p}_Wd * {p}_dWd', s.decay)}")
            lines.append(f"{p}_ds0 += _dot(tl.trans({p}_Wd), {p}_dR, {DOTS})")
            for w in range(len(s.writes)):
                lines.append(f"{p}_dB{w} += _dot(tl.trans({p}_Mw{w}), {p}_dR, {DOTS})")
                lines += self._scores_backward(
                    f"_dot({p}_dR, tl.trans({p}_B{w}), {DOTS})", f"{p}_W", f"{p}_A{w}", True, f"{p}_dW", f"{p}_dA{w}"
                )
            lines += self._scores_backward(
                f"_dot({p}_dR, tl.trans({p}_X), {DOTS})", f"{p}_W", f"{p}_U", True, f"{p}_dW", f"{p}_dU"
            )
        if s.decay != "identity":
            straddle = (
                f"{p}_dpairs"
                if diag
                else f"_straddle({p}_wi, CHUNK, False, COMPUTE) + _straddle({p}_ws, CHUNK, True, COMPUTE)"
            )
            lines.append(
                f"{p}_dlam = tl.cumsum({p}_dthrough, axis=0, reverse=True)"
                f" + (tl.cumsum({p}_dbefore, axis=0, reverse=True) - {p}_dbefore)"
                f" + (tl.cumsum({p}_dto_end, axis=0) - {p}_dto_end) + {p}_dlast + {straddle}"
            )
            lines.append(f"{p}_dlam = tl.where({p}_lam_raw < FLOOR, 0.0, {p}_dlam)")
        lines.append(f"{dst} = {p}_ds0")
        lines += self._piece_cotangents()
        return lines

    def _entry_end_backward(self, value: str, key: str, decayed_key: str) -> list[str]:
        """The adjoint of ``S' += decayed_key^T value`` (an entry decayed to the chunk's end): the cotangents
        ``d<value>`` (``prefix_dB0``, ``prefix_dX``) and ``d<key>``, and the end decays' share."""
        s, p, dst = self.state, self.p, f"dst{self.j}"

        def cotangent(tile: str) -> str:
            return tile.replace(f"{p}_", f"{p}_d", 1)

        lines = [
            f"{cotangent(value)} = _dot({decayed_key}, {dst}, {DOTS})",
            f"{cotangent(decayed_key)} = _dot({value}, tl.trans({dst}), {DOTS})",
            f"{cotangent(key)} = {decayed(p, cotangent(decayed_key), 'to_end', s.decay)}",
        ]
        if s.decay != "identity":
            lines.append(f"{p}_dto_end += {_row_sum(f'{decayed_key} * {cotangent(decayed_key)}', s.decay)}")
        return lines

    def _scores_backward(
        self, d_scores: str, query: str, key: str, strict: bool, d_query: str, d_key: str
    ) -> list[str]:
        """The adjoint of ``P(query, key)`` given its cotangent: adds to ``d_query``, ``d_key`` and the decays."""
        s, p = self.state, self.p
        flag = "True" if strict else "False"
        if s.decay == "diagonal":
            return [
                f"dq_, dk_, dl_ = _diagonal_scores_backward({d_scores}, {query}, {key}, {p}_lam, CHUNK, {flag})",
                f"{d_query} += dq_",
                f"{d_key} += dk_",
                f"{p}_dpairs += dl_",
            ]
        if s.decay == "scalar":
            factor = f"{p}_fs" if strict else f"{p}_fi"
            return [
                f"dq_, dk_, wt_ = _scores_backward({d_scores}, {query}, {key}, {factor}, CHUNK, {flag}, True, {DOTS})",
                f"{d_query} += dq_",
                f"{d_key} += dk_",
                f"{p}_{'ws' if strict else 'wi'} += wt_",
            ]
        return [
            f"dq_, dk_, wt_ = _scores_backward({d_scores}, {query}, {key}, 0.0, CHUNK, {flag}, False, {DOTS})",
            f"{d_query} += dq_",
            f"{d_key} += dk_",
        ]

    def _piece_cotangents(self) -> list[str]:
        """The rows' cotangents back to the state's per-step pieces (``d_s<j>_...``, ``d_q<k>``)."""
        s, p, lines = self.state, self.p, []
        for f, step in enumerate(s.steps):
            if step.log_decay is not None:
                if s.decay == "scalar":
                    lines.append(f"d_{p}_lam{f} = {self._from(f'{p}_dlam', f, vector=True)}")
                elif step.decay == "scalar":
                    lines.append(f"d_{p}_lam{f} = tl.sum(tl.where(mask_tk, {self._from(f'{p}_dlam', f)}, 0.0), axis=1)")
                else:
                    lines.append(f"d_{p}_lam{f} = {self._from(f'{p}_dlam', f)}")
            if step.correction is not None:
                lines.append(f"d_{p}_w{f} = {self._from(f'{p}_dW', f)}")
                lines.append(f"dU_ = {self._from(f'{p}_dU', f)}")
                lines.append(f"d_{p}_c{f} = tl.sum(dU_ * {p}_u{f}, axis=1)")
                lines.append(f"d_{p}_u{f} = dU_ * {p}_c{f}[:, None]")
        for w, (row, _, _, value) in enumerate(s.writes):
            lines.append(f"dA_ = {self._from(f'{p}_dA{w}', row)}")
            lines.append(f"d_{p}_scale{w} = tl.sum(dA_ * {p}_key{w}, axis=1)")
            lines.append(f"d_{p}_key{w} = dA_ * {p}_scale{w}[:, None]")
            if value is not None:
                lines.append(f"d_{p}_val{w} = {self._from(f'{p}_dB{w}', row)}")
        for k, r in self.reads:
            lines.append(f"d_q{k} = {self._from(f'dqr{k}', self.last_row if r.new else 0)}")
        return lines

    # --- memory ----------------------------------------------------------------------------------
    def offsets(self, kind: str) -> tuple[str, str]:
        """(offsets, mask) of the state tile in the initial/final tensors (``kind`` "io") or the saved ones:
        an int64 base per (sequence, head) or chunk slot plus small int32 offsets inside the tile."""
        s = self.state
        if s.vector:
            local, mask = "(kk[:, None] + 0 * uu[None, :])", "mask_k[:, None] & (uu[None, :] == 0)"
            size = "DK"
        elif s.key_axis == 1 and kind != "saved":
            local, mask, size = "(vv[None, :] * DK + kk[:, None])", "mask_kv", "DK * DV"
        else:
            local, mask, size = "(kk[:, None] * DV + vv[None, :])", "mask_kv", "DK * DV"
        base = "(slot * NH + h)" if kind == "saved" else "state_row"
        return f"{base} * {size} + {local}", mask
