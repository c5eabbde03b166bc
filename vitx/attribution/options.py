"""`Option`: one option of a method, declared once and read by the library, the CLI (whose
flags are generated from it) and the docs."""
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from ..baselines import DEFAULT_BASELINE, baseline
from ..errors import VitxError

# Bounds every method shares: inputs stacked into one forward pass (a memory size the user
# types: one argument must not drive a run past the machine's memory), and seeds (torch's
# generators take 64-bit seeds).
MAX_PER_PASS = 4096
MAX_SEED = 2 ** 63 - 1


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
    step: Optional[int] = None  # an int option whose values are multiples of `step` (shapley's antithetic pairs)

    @property
    def spellings(self) -> Tuple[str, ...]:
        return (self.name,) + tuple(self.aliases)

    def from_text(self, text: str, method: str) -> Any:
        """The value of a command-line spelling (`-o steps=8`): numbers parsed exactly
        ('2.5' is no int), anything else left to `parse`."""
        if self.type not in (int, float):
            return text
        try:
            return self.type(text.strip())
        except ValueError:
            raise VitxError(f"{method}: option {self.name} expects {self.type.__name__}, got {text!r}") from None

    def parse(self, value: Any, method: str) -> Any:
        """The checked value: of the declared type without silent coercion (2.5, True or '3'
        for an int are errors, not 2, 1 and 3), within the bounds and a multiple of `step`."""
        if value is None:
            return None if self.default is None else self.parse(self.default, method)
        value = self._typed(value, method)
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
        if self.step and value % self.step:
            raise VitxError(f"{method}: option {self.name} must be a multiple of {self.step}, got {value}")
        return value

    def _typed(self, value: Any, method: str) -> Any:
        wrong = VitxError(f"{method}: option {self.name} expects {self.type.__name__}, got {value!r}")
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise wrong
            if isinstance(value, numbers.Integral):
                return int(value)
            if value != value or value in (float("inf"), float("-inf")) or value != int(value):
                raise wrong  # 2.5 -> 2 would be a silent change of what the user asked
            return int(value)
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise wrong
            return float(value)
        if self.type is str:
            if not isinstance(value, str):
                raise wrong
            return value
        try:
            return self.type(value)
        except (TypeError, ValueError):
            raise wrong from None


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
                              maximum=MAX_PER_PASS,
                              aliases=("batch",))
