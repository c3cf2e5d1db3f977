"""Ahead-of-time compilation for targets this machine does not have: TPU slices' chips (``chips``), the step to
compile (``targets``), the collectives in its HLO (``hlo``), the report (``report``) and ``jaxvl compile`` (``run``)."""
