"""`Option`: one option of a method, declared once and read by the library, the CLI (whose
flags are generated from it) and the docs."""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from ..baselines import DEFAULT_BASELINE, baseline
from ..errors import VitxError


@dataclass(frozen=True)
class Option:
    """One option of an explainer, declared once and used by the library, CLI and docs."""

    name: str
    type: type
    default: Any
    help: str
    choices: Optional[Tuple[Any, ...]] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    aliases: Tuple[str, ...] = ()  # older spellings, still accepted by the library and the CLI

    @property
    def spellings(self) -> Tuple[str, ...]:
        return (self.name,) + tuple(self.aliases)

    def parse(self, value: Any, method: str) -> Any:
        if value is None:
            return None if self.default is None else self.parse(self.default, method)
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise VitxError(f"{method}: option {self.name} expects {self.type.__name__}, got {value!r}") from None
        if isinstance(value, float) and value != value:  # NaN passes every range check
            raise VitxError(f"{method}: option {self.name} must be a number, got nan")
        if self.choices is not None and value not in self.choices:
            raise VitxError(
                f"{method}: option {self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}"
            )
        too_low = self.minimum is not None and value < self.minimum
        too_high = self.maximum is not None and value > self.maximum
        if too_low or too_high:
            raise VitxError(f"{method}: option {self.name} must be in [{self.minimum}, {self.maximum}], got {value}")
        return value


def canonical_options(options: Sequence[Option], given: Dict[str, Any], method: str) -> Dict[str, Any]:
    """`given` with every alias replaced by its option's name; an option given under two of its
    spellings is an error, never a silent choice between them."""
    names = {spelling: o.name for o in options for spelling in o.spellings}
    out: Dict[str, Any] = {}
    for key, value in given.items():
        name = names.get(key, key)
        if name in out:
            raise VitxError(f"{method}: option {name} given twice (also as {key}, an older spelling of it); give one")
        out[name] = value
    return out


def baseline_option(where: str) -> Option:
    """The `baseline=` option of a method that removes pixels; `where`: which pixels, in its words."""
    return Option("baseline", baseline, DEFAULT_BASELINE, f"what removed pixels become, {where} "
                  "(vitx.baselines: mean, dataset_mean, black, blur, noise, a tensor or a callable)")


# how many masked copies of the images a perturbation method scores in one forward pass
MASKED_IMAGES_OPTION = Option("internal_batch_size", int, 256, "masked images per forward pass", minimum=1,
                              aliases=("batch",))
