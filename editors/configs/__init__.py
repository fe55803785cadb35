"""Every editor's config, registered by name with its editor class as a lazy target: importing
this package imports no torch, so `seqedit list`, `help` and `config` start at once."""

from editors.configs import (  # noqa: F401
    constrained_ft,
    defer,
    ft,
    ft_ewc,
    grace,
    ke_style,
    knn_lm,
    lora,
    melo,
    memit,
    mend_style,
    rledit,
    sera,
    tpatcher,
    ultraedit,
    wise,
)
