"""`dream bench`: dreamcli's generation path against plain diffusers, on pipelines shaped like SD1.5, SD2.1, SDXL,
SD3.5 Medium and Flux.1 dev."""
