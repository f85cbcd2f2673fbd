"""The adjoints of a chunked state's lines that backward builds from: its entries' ends, its scores, its pieces.

``StateLines`` (``rnnc.templates.chunked_state``) takes these as a mixin: each adds to a cotangent
with ``name = value`` the first time and ``name += value`` after (``_add``), so the backward's parts
can come in any order (the pair products first, for per-channel decays).

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.templates.chunked_lines import StepLines
    >>> from rnnc.templates.chunked_spec import stage_spec
    >>> from rnnc.templates.chunked_state import StateLines
    >>> state = StateLines(StepLines(stage_spec(analyse_source(open("examples/deltanet.rnn").read()))), 0)
    >>> state._started = set()
    >>> state._add("s0_dB0", "x") + state._add("s0_dB0", "y"), state._cotangent("s0_Ur")
    (['s0_dB0 = x', 's0_dB0 += y'], 's0_dUr')
"""

from __future__ import annotations

DOTS = "DOT_DTYPE, DOT_PRECISION, COMPUTE"


class StateAdjoints:
    """Adjoint lines of one linear state (a mixin of ``StateLines``: ``p``, ``j``, ``state``, ``tall``, ``wide``,
    ``_decayed``, ``_scale``, ``_factor``, ``_from`` and the backward's ``_started`` come from there)."""

    def _add(self, name: str, value: str) -> list[str]:
        """``name = value`` the first time a cotangent receives something, ``name += value`` after."""
        if name in self._started:
            return [f"{name} += {value}"]
        self._started.add(name)
        return [f"{name} = {value}"]

    def _cotangent(self, tile: str) -> str:
        """The cotangent's name of one of the state's tiles: ``s0_B0`` -> ``s0_dB0``, ``s0_Ur`` -> ``s0_dUr``."""
        return tile.replace(f"{self.p}_", f"{self.p}_d", 1)

    def _entry_end_backward(self, value: str, key: str) -> list[str]:
        """The adjoint of ``S' += Kd^T (e[:, None] * value)`` (an entry decayed to the chunk's end: ``Kd`` its key
        tile, ``e`` its row scales): the cotangents of the value, the key tile, the row scales and the end decays."""
        s, p, dst = self.state, self.p, f"dst{self.j}"
        tile, scale = self._decayed(key), self._scale(key)
        rows = f"{scale}e"
        lines = [f"{tile}_dst = _dot({tile}, {dst}, {DOTS})"]  # each decayed key row against the state's cotangent
        lines += self._add(self._cotangent(value), f"{rows}[:, None] * {tile}_dst")
        d_tile = f"_dot_across({rows}[:, None] * {value}, tl.trans({dst}), {self.wide}, {DOTS})"
        d_rows = f"tl.sum({value} * {tile}_dst, axis=1)"
        if s.decay == "diagonal":
            lines.append(f"dKd_ = {d_tile}")
            lines += self._add(self._cotangent(key), f"dKd_ * tl.exp({p}_to_end)")
            lines.append(f"{p}_dto_end += {tile} * dKd_")
            lines += self._add(self._cotangent(scale), d_rows)
        elif s.decay == "scalar":
            lines += self._add(self._cotangent(key), d_tile)
            lines.append(f"de_ = {d_rows}")
            lines += self._add(self._cotangent(scale), f"de_ * tl.exp({p}_to_end)")
            lines.append(f"{p}_dto_end += de_ * {rows}")
        else:
            lines += self._add(self._cotangent(key), d_tile)
            lines += self._add(self._cotangent(scale), d_rows)
        return lines

    def _scores_backward(
        self, d_scores: str, query: str, key: str, strict: bool, d_query: str, scores: str
    ) -> list[str]:
        """The adjoint of the scores ``scores`` = P(query, key) given their cotangent: adds to ``d_query``, the
        key tile's and its row scales' cotangents and the decays'."""
        s, p = self.state, self.p
        flag = "True" if strict else "False"
        scale = self._scale(key)
        d_key, d_scale = self._cotangent(key), self._cotangent(scale)
        if s.decay == "diagonal":
            lines = [f"dS_ = {d_scores}"]
            lines += self._add(d_scale, f"tl.sum(dS_ * {scores}r, axis=0)")
            for name in (d_query, d_key):
                lines += [] if name in self._started else self._add(name, "rzero_key")
            call = f"_diagonal_scores_backward(dS_ * {scale}[None, :], {query}, {key}, {p}_lam, {d_query}, {d_key}"
            return lines + [f"{d_query}, {d_key}, {p}_dpairs = {call}, {p}_dpairs, CHUNK, {flag})"]
        decays = "True" if s.decay == "scalar" else "False"
        factor = self._factor(strict)
        flags = f"CHUNK, {flag}, {decays}, {self.wide}, {DOTS}"
        call = f"_scores_backward({d_scores}, {query}, {key}, {factor}, {scale}, {flags})"
        lines = [f"dq_, dk_, wt_, ds_ = {call}"]
        lines += self._add(d_query, "dq_") + self._add(d_key, "dk_") + self._add(d_scale, "ds_")
        if s.decay == "scalar":
            lines.append(f"{p}_{'ws' if strict else 'wi'} += wt_")
        return lines

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
                lines.append(f"d_{p}_u{f} = {self._from(f'{p}_dU', f)}")
                lines.append(f"d_{p}_c{f} = {self._from(f'{p}_dUr', f, vector=True)}")
        for w, (row, _, _, value) in enumerate(s.writes):
            lines.append(f"d_{p}_key{w} = {self._from(f'{p}_dA{w}', row)}")
            lines.append(f"d_{p}_scale{w} = {self._from(f'{p}_dAr{w}', row, vector=True)}")
            if value is not None:
                lines.append(f"d_{p}_val{w} = {self._from(f'{p}_dB{w}', row)}")
        for k, r in self.reads:
            lines.append(f"d_q{k} = {self._from(f'dqr{k}', self.last_row if r.new else 0)}")
        return lines
