"""The five VOLTA presets for `jaxvl models`: build, count parameters, run one forward pass.

    jaxvl models --config models            # ctrl sizes (about 2 minutes on a 2-core CPU)
    jaxvl models --config models:tiny --config.presets=lxmert,vilbert --config.batch=4
"""

from ml_collections import ConfigDict

from jaxvl.configs import parse_arg

# For `jaxvl models --help`: the argument's form, its words, and the keys a run must set (none).
ARGUMENT = "[tiny]"
VARIANTS = {
    "(none)": "the forward pass at VOLTA's ctrl sizes",
    "tiny": "the forward pass at the test sizes (parameters are still counted at ctrl size)",
}
REQUIRED: dict[str, str] = {}


def get_config(arg: str | None = None) -> ConfigDict:
    """The config of ``arg`` (``ARGUMENT``; the module doc)."""
    args = parse_arg(arg, tiny=False)
    cfg = ConfigDict()
    cfg.presets = "visualbert,uniter,vl-bert,lxmert,vilbert"
    cfg.size = "tiny" if args.tiny else "ctrl"
    cfg.batch = 2
    cfg.text_len = 38  # VOLTA's max_seq_length
    cfg.regions = 37  # 36 detected regions + the global [IMG] row
    return cfg
