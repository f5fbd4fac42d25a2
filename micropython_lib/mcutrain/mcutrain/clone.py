# mt.clone(layer): an independent copy of a layer or a whole model. A layer belongs to at
# most one container (usermod/README.md, "Ownership"), so a layer wanted in a second model,
# or a model transformed (fold_batchnorm, quantize), is copied: constructor config,
# parameters, running statistics, trainable and quant_range. Optimizer state and planned
# buffers are not copied (the copy plans its own on its first call).


def clone(layer, dtype=None):
    """A new layer equal to `layer` (Sequential and Residual copied with all their layers),
    sharing nothing with it. dtype= (simple layers only) builds it in another dtype instead;
    its parameters are then left as initialized, for the caller to fill."""
    import mcutrain as mt

    kind = type(layer).__name__
    if kind == "Sequential":
        return mt.Sequential(*[clone(child) for child in layer])
    if kind == "Residual":
        s = layer.shortcut
        return mt.Residual(clone(layer.body), None if s is None else clone(s))
    kw = layer.config()
    if dtype is not None:
        kw["dtype"] = dtype
        new = type(layer)(**kw)
        if not layer.trainable:
            new.trainable = False
        return new
    new = type(layer)(**kw)
    new.copy_from(layer)  # parameters, statistics, quant_range (exactly), trainable
    return new
