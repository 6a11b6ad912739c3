"""The layers of a model whose features are measured, pooled as the head pools, in one pass.

A layer is one of

* a tap of timm's ``forward_intermediates``: timm numbers the taps as its ``feature_info``
  lists them (the stem and stage outputs of a CNN, every block of a ViT) and returns them
  as ``[B, C, H, W]`` maps, with the prefix (class) tokens beside them where the model has
  some. The pass runs ``forward_intermediates`` and the model's own ``forward_head`` on its
  final features, so the taps and the logits come from one forward pass;
* a named module, captured with a forward hook (models without ``forward_intermediates``,
  names that are not taps, and the blocks of ``all``).

What to measure (:func:`select_layers`): ``"stages"`` every tap; ``"all"`` every tap, with a
tap that is a sequence of blocks (an ``nn.Sequential`` such as ResNet's ``layer1``) split into
its blocks; or names and indices (taps by their ``feature_info`` module name or timm index,
negative from the end; other names are modules to hook).

Each layer's output is pooled the way the model's own head pools (:func:`head_pooling`):
timm's global pooling (``avg``, ``max``, ``avgmax``, ``catavgmax``) over the H x W positions
of a map, and for token models [B, N, D] the class token (``token``) or the pool over the
patch tokens, as timm's ``global_pool_nlc`` does. A [B, D] output is kept as it is
(``none``). The pooling is recorded with each layer.

Memory: the pass keeps the pooled features of every layer, ``n * sum_l d_l`` float32 values
(``4 n sum_l d_l`` bytes; ResNet-18 ``stages`` at n = 50,000: sum_l d_l = 64 + 64 + 128 +
256 + 512 = 1024, 205 MB; ViT-B/16, 12 blocks of 768: 1.8 GB), besides the penultimate
features and the logits; the maps live one batch at a time.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from infoprobe import parsing
from infoprobe.errors import InputError, RunFailure, short_list

STAGES, ALL = "stages", "all"
#: The name of the head's own input (the penultimate features) among the layers.
PRE_LOGITS = "pre_logits"
#: Pool types of timm's token pooling (``global_pool_nlc``).
_TOKEN_POOLS = ("token", "avg", "max", "avgmax")


@dataclass(frozen=True)
class Layer:
    """``name``: the module's dotted name; ``index``: its ``forward_intermediates`` tap (None:
    a forward hook on the module); ``channels``: the width the module's [B, C, H, W] output
    must have (a block that ends a split tap: its output is the tap's)."""

    name: str
    index: int | None = None
    channels: int | None = None


@dataclass(frozen=True)
class LayerFeatures:
    """One layer's pooled features: ``features`` float32 [n, d] on cpu, ``pooling`` how its
    output was pooled (``avg``, ``token``, ..., ``none``; ``head`` for :data:`PRE_LOGITS`)."""

    name: str
    pooling: str
    features: Tensor

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def tap_names(model: nn.Module) -> list[str] | None:
    """The module names of the taps of ``model.forward_intermediates``, in timm's order (its
    ``feature_info``); None when the model has no ``forward_intermediates``."""
    if not callable(getattr(model, "forward_intermediates", None)):
        return None
    info = getattr(model, "feature_info", None)
    if not info:
        raise InputError(
            f"{type(model).__name__} has forward_intermediates but no feature_info naming its "
            "taps; name the modules to hook with --layers NAME,NAME"
        )
    names = [str(entry.get("module") or i) for i, entry in enumerate(info)]
    if len(set(names)) != len(names):
        raise InputError(
            f"{type(model).__name__}'s taps are not one module each ({short_list(names)}); "
            "name the modules to hook with --layers NAME,NAME"
        )
    return names


def _children_hint(model: nn.Module) -> str:
    return short_list([name for name, _ in model.named_children()], 8)


def select_layers(model: nn.Module, spec) -> list[Layer]:
    """The layers ``spec`` names (module doc), in its order; InputError for one the model
    lacks, naming what it has."""
    spec = parsing.layers(spec, "--layers")
    taps = tap_names(model)
    if spec in (STAGES, ALL):
        if taps is None:
            raise InputError(
                f"--layers {spec}: {type(model).__name__} has no forward_intermediates (timm's "
                "API for intermediate layers); name the modules to hook with --layers "
                f"NAME,NAME (its top-level modules: {_children_hint(model)})"
            )
        layers = [Layer(name, i) for i, name in enumerate(taps)]
        return _split_blocks(model, layers) if spec == ALL else layers
    if PRE_LOGITS in spec:
        raise InputError(
            f"--layers {PRE_LOGITS}: the head's input is always measured (the last row); "
            "name the other layers"
        )
    layers = [_named_layer(model, item, taps) for item in spec]
    names = [layer.name for layer in layers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"--layers names {', '.join(twice)} twice; list each layer once")
    return layers


def _named_layer(model: nn.Module, item: str | int, taps: list[str] | None) -> Layer:
    if isinstance(item, int) and taps is None and item >= 0:
        item = str(item)  # without taps a number names a child of an nn.Sequential
    if isinstance(item, int):
        if taps is None:
            raise InputError(
                f"--layers {item}: {type(model).__name__} has no forward_intermediates, so its "
                f"layers have no index; name modules instead ({_children_hint(model)})"
            )
        index = item + len(taps) if item < 0 else item
        if not 0 <= index < len(taps):
            raise InputError(
                f"--layers {item}: the model has {len(taps)} taps, indices 0..{len(taps) - 1} "
                f"(or -{len(taps)}..-1): {short_list(taps, 8)}"
            )
        return Layer(taps[index], index)
    if taps is not None and item in taps:
        return Layer(item, taps.index(item))
    try:
        model.get_submodule(item)
    except AttributeError:
        where = f"taps: {short_list(taps, 8)}; " if taps else ""
        raise InputError(
            f"--layers {item}: no such module in {type(model).__name__} ({where}top-level "
            f"modules: {_children_hint(model)})"
        ) from None
    return Layer(item)


def _split_blocks(model: nn.Module, layers: list[Layer]) -> list[Layer]:
    """Each tap that is an ``nn.Sequential`` of several blocks replaced by its blocks
    (hooked); the last block's output is the tap's, of the tap's width."""
    info = model.feature_info
    out = []
    for layer in layers:
        module = model.get_submodule(layer.name)
        if not isinstance(module, nn.Sequential) or len(module) < 2:
            out.append(layer)
            continue
        children = list(module._modules)
        channels = int(info[layer.index]["num_chs"])
        out.extend(
            Layer(f"{layer.name}.{child}", None, channels if child == children[-1] else None)
            for child in children
        )
    return out


def head_pooling(model: nn.Module) -> str:
    """How the model's head pools its last map: timm's ``global_pool`` name.

    The model's ``global_pool`` when it is a string (timm's token models: ``token``,
    ``avg``, ...); else the pool type of its last pooling module (timm's
    ``SelectAdaptivePool2d``, or torch's adaptive average / max pooling); ``avg`` when it
    has none. InputError for pooling that a layer of another width cannot share: none
    (``''``, the head reads the whole map) or attention pooling (``map``)."""
    from timm.layers import SelectAdaptivePool2d

    pool = getattr(model, "global_pool", None)
    if not isinstance(pool, str):
        kinds = (SelectAdaptivePool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
        found = [m for m in model.modules() if isinstance(m, kinds)]
        last = found[-1] if found else None
        if isinstance(last, SelectAdaptivePool2d):
            pool = last.pool_type
        else:
            pool = "max" if isinstance(last, nn.AdaptiveMaxPool2d) else "avg"
    if pool in ("", "map"):
        what = "does not pool its last map" if pool == "" else "pools by attention ('map')"
        raise InputError(
            f"{type(model).__name__} {what}, which has no counterpart for a layer of another "
            "width: layer rows need a model that pools with avg, max, avgmax, catavgmax or "
            "its class token"
        )
    return pool


class LayerPass:
    """The layers of one evaluation pass: hooks, the forward, and the pooling.

    Use :meth:`hooked` around the pass and :meth:`run` per batch: it returns the model's
    output and each layer's pooled features [b, d_l], in the order of ``layers``. The
    caller checks the first batch's output against the model's own forward (``verified``).
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[Layer], low_precision: bool = False
    ) -> None:
        from timm.layers import SelectAdaptivePool2d

        self.model, self.layers = model, list(layers)
        #: Autocast runs the pass: the first-batch check allows its round-off.
        self.low_precision = low_precision
        #: Whether the first batch showed the taps' forward to give the model's output.
        self.verified = False
        self.pooling = head_pooling(model)
        self.indices = sorted({layer.index for layer in self.layers if layer.index is not None})
        self.captured: dict[str, list] = {
            layer.name: [] for layer in self.layers if layer.index is None
        }
        self.prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.include_prefix = bool(getattr(model, "pool_include_prefix", False))
        self.options = self._tap_options()
        #: How each layer's output was pooled (set by :meth:`run`).
        self.pooled_as: dict[str, str] = {}
        self.map_pool = None
        if self.pooling != "token":
            try:
                self.map_pool = SelectAdaptivePool2d(pool_type=self.pooling, flatten=True)
            except AssertionError:
                raise InputError(
                    f"{type(model).__name__} pools with {self.pooling!r}, which timm's "
                    "SelectAdaptivePool2d does not know; layer rows need avg, max, avgmax, "
                    "catavgmax or the class token"
                ) from None

    @property
    def uses_taps(self) -> bool:
        """Whether the pass runs ``forward_intermediates`` (else the model's forward)."""
        return bool(self.indices)

    def _tap_options(self) -> dict:
        """Extra ``forward_intermediates`` arguments: the prefix tokens when the pooling
        needs them (class token, or pooling over every token)."""
        if not self.indices or not (self.pooling == "token" or self.include_prefix):
            return {}
        params = inspect.signature(self.model.forward_intermediates).parameters
        if self.prefix > 0 and "return_prefix_tokens" in params:
            return {"return_prefix_tokens": True}
        raise InputError(
            f"{type(self.model).__name__} pools with its class token, but its "
            "forward_intermediates does not return it; name the blocks to hook with "
            "--layers NAME,NAME"
        )

    @contextlib.contextmanager
    def hooked(self) -> Iterator[LayerPass]:
        """Forward hooks on the hooked layers' modules for the duration of the pass."""
        handles = []
        try:
            for name, got in self.captured.items():
                module = self.model.get_submodule(name)
                handles.append(
                    module.register_forward_hook(lambda _m, _a, out, got=got: got.append(out))
                )
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for got in self.captured.values():
                got.clear()

    def run(self, x: Tensor) -> tuple[object, list[Tensor]]:
        """(the model's output, pooled features of each layer [b, d_l]) for one batch."""
        for got in self.captured.values():
            got.clear()
        tapped: dict[int, object] = {}
        if self.indices:
            final, found = self.model.forward_intermediates(x, indices=self.indices, **self.options)
            if len(found) != len(self.indices):
                raise RunFailure(
                    f"forward_intermediates returned {len(found)} maps for the "
                    f"{len(self.indices)} taps {self.indices}; name modules to hook instead"
                )
            tapped = dict(zip(self.indices, found, strict=True))
            output = self.model.forward_head(final)
        else:
            output = self.model(x)
        pooled = []
        for layer in self.layers:
            out = self._output(layer, tapped)
            plain = isinstance(out, Tensor) and out.ndim == 2
            self.pooled_as[layer.name] = "none" if plain else self.pooling
            pooled.append(out if plain else self._pool(out, layer))
        return output, pooled

    def _output(self, layer: Layer, tapped: dict[int, object]) -> object:
        if layer.index is not None:
            return tapped[layer.index]
        got = self.captured[layer.name]
        if len(got) != 1:
            raise InputError(
                f"--layers {layer.name}: the module ran {len(got)} times in one forward pass; "
                "name a module that runs once"
            )
        return got[0]

    def _pool(self, out: object, layer: Layer) -> Tensor:
        """[b, d] features of one layer's output (module doc)."""
        from timm.models.vision_transformer import global_pool_nlc

        if isinstance(out, (tuple, list)) and len(out) == 2 and out[0].ndim == 4:
            spatial, prefix = out  # a ViT tap: patch tokens as a map, prefix tokens beside
            tokens = torch.cat([prefix, spatial.flatten(2).mT], 1)
            return self._pool_tokens(global_pool_nlc, tokens, prefix.shape[1])
        if not isinstance(out, Tensor):
            raise InputError(
                f"--layers {layer.name}: the module returns a {type(out).__name__}; name a "
                "module that returns one tensor"
            )
        if out.ndim == 4:
            return self._pool_map(out, layer)
        if out.ndim == 3:
            return self._pool_tokens(global_pool_nlc, out, self.prefix)
        raise InputError(
            f"--layers {layer.name}: its output has shape {tuple(out.shape)}; layers must "
            "give [B, C, H, W] maps, [B, N, D] tokens or [B, D] features"
        )

    def _pool_map(self, out: Tensor, layer: Layer) -> Tensor:
        if layer.index is None and getattr(self.model, "output_fmt", "NCHW") != "NCHW":
            raise InputError(
                f"--layers {layer.name}: {type(self.model).__name__} keeps its maps as "
                f"{self.model.output_fmt}; use its taps (--layers stages or tap names)"
            )
        if layer.channels is not None and out.shape[1] != layer.channels:
            raise InputError(
                f"--layers all: block {layer.name} gives {tuple(out.shape[1:])} per sample, "
                f"not the {layer.channels} channels of its stage's [C, H, W] map; use "
                "--layers stages"
            )
        if self.map_pool is None:
            raise InputError(
                f"--layers {layer.name}: a [B, C, H, W] map has no class token to pool, but "
                f"{type(self.model).__name__} pools its class token; name blocks that output "
                "tokens"
            )
        return self.map_pool(out)

    def _pool_tokens(self, pool_nlc, tokens: Tensor, prefix: int) -> Tensor:
        if self.pooling not in _TOKEN_POOLS:
            raise InputError(
                f"{type(self.model).__name__} pools with {self.pooling!r}, which has no "
                f"token form; layer rows of token models need one of {', '.join(_TOKEN_POOLS)}"
            )
        if self.pooling == "token" and prefix == 0:
            raise InputError(
                f"{type(self.model).__name__} pools its class token, but the layer's tokens "
                "have none"
            )
        return pool_nlc(tokens, self.pooling, prefix, self.include_prefix)


def close_outputs(got: Tensor, want: Tensor, low_precision: bool) -> bool:
    """Whether two logits tensors agree to the round-off of float32 (``low_precision``:
    of autocast), ``max |got - want| <= tol * max(1, max |want|)`` over the finite
    entries, with NaN/Inf in the same places (they are reported after the pass)."""
    if got.shape != want.shape:
        return False
    got, want = got.float(), want.float()
    finite = torch.isfinite(want)
    if not torch.equal(finite, torch.isfinite(got)):
        return False
    if not finite.any():
        return True
    tol = 5e-2 if low_precision else 1e-3
    gap = (got[finite] - want[finite]).abs().max()
    return bool(gap <= tol * max(1.0, float(want[finite].abs().max())))
