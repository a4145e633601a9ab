"""Loading a checkpoint into a module whose default structure changed."""

__all__ = ['check_variant_keys']


def check_variant_keys(module, state_dict, prefix, hint):
    """Raise ``ValueError`` if ``state_dict`` holds weights under ``prefix`` that do not fit
    ``module``'s structure (names and shapes): a checkpoint of another ``variant``.

    Loading would otherwise list the keys (strict) or leave the module half-initialised
    (``load_from``, ``Pretrained``). A state dict with no key under ``prefix`` passes.
    """
    given = {k[len(prefix):]: tuple(v.shape) for k, v in state_dict.items()
             if k.startswith(prefix) and hasattr(v, 'shape')}
    if not given:
        return
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if given == expected:
        return
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    reshaped = sorted(k for k in set(given) & set(expected) if given[k] != expected[k])
    raise ValueError(
        f'{type(module).__name__}: the checkpoint\'s weights under {prefix!r} do not fit '
        f'variant={module.variant!r} (missing {len(missing)}: {missing[:3]}; unexpected '
        f'{len(unexpected)}: {unexpected[:3]}; other shapes {len(reshaped)}: {reshaped[:3]}). '
        f'{hint}.')
