"""The chunked kernels' lines for one linear state: its rows, its chunk forward, and the chunk's backward.

State ``j`` (tile ``st<j>``, ``[BK, BV]``, or ``[BK, BU]`` for a vector state with its one value column
padded to BU) over the rows of a chunk (``CHUNK`` = ``STEPS * N_SUB`` rows):

    rows      lam (log decays, floored), W and U (the correction's query and key) with Ur (U's row
              scales), A_w, Ar_w and B_w (each write's key, its row scales and its value), qr<k>
              (each read's query at its row)
    forward   X  = (I - P(W, U))^-1 (Wd S + sum_w P(W, A_w) B_w)      (corrections: the UT form)
              Y_k = Qd_k S + P(q_k, U) X + sum_w P(q_k, A_w) B_w       (reads, old or new state)
              S' = exp(last) S + Ud^T X + sum_w Ad_w^T B_w
    backward  the adjoint of each line above, the decays' cotangents as direct sums

``P(q, a)`` are the decayed causal scores (strict for the old state and for corrections),
``Qd``, ``Wd``, ``Ud``, ``Ad`` the tiles decayed from the chunk's start or to its end. A key's row
scales (``beta``, ``c``) and a scalar decay to the chunk's end stay ``[CHUNK]`` vectors applied on the
small side of each product (the scores' columns, the values' rows): the ``[CHUNK, BK]`` tiles are the
pieces themselves, so entries sharing a key (DeltaNet's ``k``) share their products and registers.

Example:
    >>> decayed("s0", "x", "through", "scalar")
    'x * tl.exp(s0_through)[:, None]'
"""

from __future__ import annotations

from rnnc.templates.chunked_adjoints import DOTS, StateAdjoints
from rnnc.templates.chunked_lines import StepLines
from rnnc.templates.chunked_spec import StateRows


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


class StateLines(StateAdjoints):
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
        # where ALIGN (the launcher sets it before sm_90, whose tensor cores take every product on mma v2),
        # backward computes the products across the orientation of its last one as their transposes (see
        # _dot_wide): that is a tall state update without a correction (the [CHUNK, BK] products turn), a wide
        # key cotangent with one (the [BK, BV] state updates turn)
        self.wide = "False" if self.state.corrected else "ALIGN"
        self.tall = "ALIGN" if self.state.corrected else "False"

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
            u = [f"{p}_u{f}" if st.correction else "zero_key" for f, st in enumerate(s.steps)]
            c = [f"{p}_c{f}" if st.correction else "zero_sc" for f, st in enumerate(s.steps)]
            lines += [f"{p}_W = {self._place(w)}", f"{p}_U = {self._place(u)}", f"{p}_Ur = {self._place(c, True)}"]
        for w, (row, _, _, value) in enumerate(s.writes):
            lines.append(f"{p}_A{w} = {self._at(f'{p}_key{w}', row, 'zero_key')}")
            lines.append(f"{p}_Ar{w} = {self._at(f'{p}_scale{w}', row, 'zero_sc', vector=True)}")
            if value is None:
                lines.append(f"{p}_B{w} = ones_unit")
            else:
                lines.append(f"{p}_B{w} = {self._at(f'{p}_val{w}', row, 'zero_val')}")
        for k, r in self.reads:
            lines.append(f"qr{k} = {self._at(f'q{k}', self.last_row if r.new else 0, 'zero_key')}")
        return lines

    # --- the chunk's forward ------------------------------------------------------------------
    def _factor(self, strict: bool) -> str:
        """The scalar decays' pair factor (0.0, unused, for identity decays)."""
        if self.state.decay != "scalar":
            return "0.0"
        return f"{self.p}_fs" if strict else f"{self.p}_fi"

    def _score_lines(self, name: str, query: str, key: str, strict: bool) -> list[str]:
        """``name`` = the causal scores of ``query`` against the entry ``key`` (its row scales on the columns);
        per-channel decays keep the unscaled scores as ``<name>r`` (their scales' cotangent reads them)."""
        s, p = self.state, self.p
        flag, scale = ("True" if strict else "False"), self._scale(key)
        if s.decay == "diagonal":
            scaled = f"tl.where(_causal(CHUNK, {flag}), {name}r * {scale}[None, :], 0.0)"  # a NaN scale: no earlier row
            return [f"{name}r = _diagonal_scores({query}, {key}, {p}_lam, CHUNK, {flag})", f"{name} = {scaled}"]
        factor = f"{self._factor(strict)} * {scale}[None, :]" if s.decay == "scalar" else f"{scale}[None, :]"
        return [f"{name} = _scores({query}, {key}, {factor}, CHUNK, {flag}, True, {DOTS})"]

    def _scale(self, key: str) -> str:
        """The row scales of an entry's key tile: ``s0_U`` -> ``s0_Ur``, ``s0_A1`` -> ``s0_Ar1``."""
        p = self.p
        return f"{p}_Ur" if key == f"{p}_U" else key.replace(f"{p}_A", f"{p}_Ar", 1)

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
            lines += self._score_lines(f"{p}_M", f"{p}_W", f"{p}_U", True)
            lines.append(f"{p}_T = _unit_lower_inverse({p}_M, CHUNK)")
            lines.append(f"{p}_Wd = {decayed(p, f'{p}_W', 'before', s.decay)}")
            rhs = f"_dot({p}_Wd, {st}, {DOTS})"
            for w in range(len(s.writes)):
                lines += self._score_lines(f"{p}_Mw{w}", f"{p}_W", f"{p}_A{w}", True)
                rhs += f" + _causal_dot({p}_Mw{w}, {p}_B{w}, True, {DOTS})"
            lines.append(f"{p}_R = {rhs}")
            lines.append(f"{p}_X = _causal_dot({p}_T, {p}_R, False, {DOTS})")
        for k, r in self.reads:
            strict = not r.new
            flag = "True" if strict else "False"
            lines.append(f"qd{k} = {decayed(p, f'qr{k}', self._query_decay(strict), s.decay)}")
            y = f"_dot(qd{k}, {st}, {DOTS})"
            if s.corrected:
                lines += self._score_lines(f"{p}_P{k}u", f"qr{k}", f"{p}_U", strict)
                y += f" + _causal_dot({p}_P{k}u, {p}_X, {flag}, {DOTS})"
            for w in range(len(s.writes)):
                lines += self._score_lines(f"{p}_P{k}w{w}", f"qr{k}", f"{p}_A{w}", strict)
                y += f" + _causal_dot({p}_P{k}w{w}, {p}_B{w}, {flag}, {DOTS})"
            lines.append(f"yr{k} = {y}")
            steps = self._from(f"yr{k}", self.last_row if r.new else 0)
            if s.vector:
                steps = f"tl.sum(tl.where(uu[None, :] == 0, {steps}, 0.0), axis=1)"
            lines.append(f"y{k} = {steps}")
        return lines

    def split_recompute(self) -> tuple[list[str], list[str]]:
        """The recompute of a ``pairs_first`` state in two: the reads' scores (before the outputs' cotangents),
        then its decay sums and decayed queries (after the pair products went back; no reads: none is needed)."""
        s, p = self.state, self.p
        scores, rest = [], [f"{p}_through, {p}_before, {p}_to_end, {p}_last = _decay_sums({p}_lam)"]
        for k, r in self.reads:
            for w in range(len(s.writes)):
                scores += self._score_lines(f"{p}_P{k}w{w}", f"qr{k}", f"{p}_A{w}", not r.new)
            rest.append(f"qd{k} = {decayed(p, f'qr{k}', self._query_decay(not r.new), s.decay)}")
        return scores, rest

    def _entries(self) -> list[tuple[str, str]]:
        """(key tile, value tile) of each entry the state after the chunk receives: writes, then the correction."""
        p = self.p
        entries = [(f"{p}_A{w}", f"{p}_B{w}") for w in range(len(self.state.writes))]
        return entries + ([(f"{p}_U", f"{p}_X")] if self.state.corrected else [])

    def end_lines(self) -> list[str]:
        """The entries decayed to the chunk's end (what the state after it receives): ``<key>d`` the key tile
        (decayed per channel), ``<scale>e`` its row scales (times a scalar decay)."""
        s, p, lines = self.state, self.p, []
        for key, _ in self._entries():
            tile = f"{key} * tl.exp({p}_to_end)" if s.decay == "diagonal" else key
            scale = self._scale(key)
            rows = f"{scale} * tl.exp({p}_to_end)" if s.decay == "scalar" else scale
            lines += [f"{self._decayed(key)} = {tile}", f"{scale}e = {rows}"]
        return lines

    def _decayed(self, key: str) -> str:
        """An entry's key tile decayed to the chunk's end, by name: ``s0_U`` -> ``s0_Ud``, ``s0_A1`` -> ``s0_Ad1``."""
        p = self.p
        return f"{p}_Ud" if key == f"{p}_U" else key.replace(f"{p}_A", f"{p}_Ad", 1)

    def advance_lines(self) -> list[str]:
        """The state after the chunk."""
        s, p = self.state, self.p
        st = f"st{self.j}"
        if s.decay == "identity":
            new = st
        else:
            new = f"tl.exp({p}_last) * {st}" if s.decay == "scalar" else f"tl.exp({p}_last)[:, None] * {st}"
        for key, value in self._entries():
            new += f" + _dot(tl.trans({self._decayed(key)}), {self._scale(key)}e[:, None] * {value}, {DOTS})"
        return [*self.end_lines(), f"{st} = {new}"]

    # --- the chunk's backward -----------------------------------------------------------------
    def backward_lines(self, late: list[str] | None = None) -> list[str]:
        """Cotangents of the rows and of the chunk's starting state from those of its reads and end state.

        Reads ``dy<k>`` (per step) and ``dst<j>`` (the state after the chunk); leaves ``dst<j>`` as the
        cotangent of the state before the chunk and ``d_<piece>`` for each of the state's pieces. With
        ``late`` (the chunk's recompute past its rows and scores, see ``pairs_first``), the reads' pair
        products with the writes go back first and ``late`` follows them: the per-channel decays' loops
        then run while few ``[CHUNK, BK]`` tiles are live.
        """
        s, p, j = self.state, self.p, self.j
        st, dst = f"st{j}", f"dst{j}"
        diag, scalar = s.decay == "diagonal", s.decay == "scalar"
        self._started: set[str] = set()
        lines = []
        for k, r in self.reads:
            tile = f"tl.where(uu[None, :] == 0, dy{k}[:, None], 0.0)" if s.vector else f"dy{k}"
            zero = "zero_unit" if s.vector else "zero_val"
            lines.append(f"dyr{k} = {self._at(tile, self.last_row if r.new else 0, zero)}")
        if s.decay != "identity":
            sums = "rzero_sc" if scalar else "rzero_key"
            lines += [f"{p}_dthrough = {sums}", f"{p}_dbefore = {sums}", f"{p}_dto_end = {sums}"]
            lines += [f"{p}_wi = rzero_pairs", f"{p}_ws = rzero_pairs"] if scalar else [f"{p}_dpairs = rzero_key"]
        pairs = []
        for k, r in self.reads:
            for w in range(len(s.writes)):
                pairs.append((k, r, w))
        if late is not None:
            for k, r, w in pairs:
                d_scores = f"_dot(dyr{k}, tl.trans({p}_B{w}), {DOTS})"
                lines += self._scores_backward(d_scores, f"qr{k}", f"{p}_A{w}", not r.new, f"dqr{k}", f"{p}_P{k}w{w}")
                lines += self._add(f"{p}_dB{w}", f"_dot(tl.trans({p}_P{k}w{w}), dyr{k}, {DOTS})")
            lines += late
        if s.decay == "identity":
            lines += self._add(f"{p}_ds0", dst)
        else:
            lines += self._add(f"{p}_ds0", f"tl.exp({p}_last){'' if scalar else '[:, None]'} * {dst}")
            last = f"tl.sum({st} * {dst})" if scalar else f"tl.sum({st} * {dst}, axis=1)"
            lines.append(f"{p}_dlast = {last} * tl.exp({p}_last)")
        for key, value in self._entries():
            lines += self._entry_end_backward(value, key)
        for k, r in self.reads:
            strict = not r.new
            which = self._query_decay(strict)
            lines.append(f"dqd{k} = _dot_across(dyr{k}, tl.trans({st}), {self.wide}, {DOTS})")
            lines += self._add(f"dqr{k}", decayed(p, f"dqd{k}", which, s.decay))
            if s.decay != "identity":
                lines.append(f"{p}_d{which} += {_row_sum(f'qd{k} * dqd{k}', s.decay)}")
            lines += self._add(f"{p}_ds0", f"_dot_across(tl.trans(qd{k}), dyr{k}, {self.tall}, {DOTS})")
            if s.corrected:
                lines += self._add(f"{p}_dX", f"_dot(tl.trans({p}_P{k}u), dyr{k}, {DOTS})")
                d_scores = f"_dot(dyr{k}, tl.trans({p}_X), {DOTS})"
                lines += self._scores_backward(d_scores, f"qr{k}", f"{p}_U", strict, f"dqr{k}", f"{p}_P{k}u")
            for w in range(len(s.writes) if late is None else 0):  # pairs first: these went back above
                lines += self._add(f"{p}_dB{w}", f"_dot(tl.trans({p}_P{k}w{w}), dyr{k}, {DOTS})")
                d_scores = f"_dot(dyr{k}, tl.trans({p}_B{w}), {DOTS})"
                lines += self._scores_backward(d_scores, f"qr{k}", f"{p}_A{w}", strict, f"dqr{k}", f"{p}_P{k}w{w}")
        if s.corrected:
            lines.append(f"{p}_dR = _dot(tl.trans({p}_T), {p}_dX, {DOTS})")
            lines.append(f"{p}_dWd = _dot({p}_dR, tl.trans({st}), {DOTS})")
            lines += self._add(f"{p}_dW", decayed(p, f"{p}_dWd", "before", s.decay))
            if s.decay != "identity":
                lines.append(f"{p}_dbefore += {_row_sum(f'{p}_Wd * {p}_dWd', s.decay)}")
            lines += self._add(f"{p}_ds0", f"_dot_across(tl.trans({p}_Wd), {p}_dR, {self.tall}, {DOTS})")
            for w in range(len(s.writes)):
                lines += self._add(f"{p}_dB{w}", f"_dot(tl.trans({p}_Mw{w}), {p}_dR, {DOTS})")
                d_scores = f"_dot({p}_dR, tl.trans({p}_B{w}), {DOTS})"
                lines += self._scores_backward(d_scores, f"{p}_W", f"{p}_A{w}", True, f"{p}_dW", f"{p}_Mw{w}")
            d_scores = f"_dot({p}_dR, tl.trans({p}_X), {DOTS})"
            lines += self._scores_backward(d_scores, f"{p}_W", f"{p}_U", True, f"{p}_dW", f"{p}_M")
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

    def pairs_first(self, reads_needed: bool) -> bool:
        """Whether backward takes the reads' pair products first (``backward_lines``' ``late``): for per-channel
        decays without a correction (their products are loops over the chunk's rows), when the outputs'
        cotangents do not need the reads (``reads_needed``: then the whole recompute comes before them)."""
        return self.state.decay == "diagonal" and not self.state.corrected and not reads_needed and bool(self.reads)

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
