"""The five VOLTA presets for `jaxvl models`: build, count parameters, run one forward pass.

    jaxvl models --config models            # ctrl sizes (about 2 minutes on a 2-core CPU)
    jaxvl models --config models:tiny --config.presets=lxmert,vilbert --config.batch=4
"""

from ml_collections import ConfigDict

from jaxvl.configs import parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_arg(arg, tiny=False)
    cfg = ConfigDict()
    cfg.presets = "visualbert,uniter,vl-bert,lxmert,vilbert"
    cfg.size = "tiny" if args.tiny else "ctrl"
    cfg.batch = 2
    cfg.text_len = 38  # VOLTA's max_seq_length
    cfg.regions = 37  # 36 detected regions + the global [IMG] row
    return cfg
