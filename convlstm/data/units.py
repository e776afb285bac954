"""A radar archive's units and the models' [0, 1] scale: --transform dbz|rainrate|none, the Z-R relation.

Models read and predict values in [0, 1]. Reflectivity (dBZ) maps there linearly over [-10, 60] dBZ, HKO-7's pixel
scale ((dBZ + 10) / 70); rain rates (mm/h) go to dBZ through the Z-R relation Z = a R^b first (Marshall-Palmer
a=200, b=1.6 by default; HKO-7's a=58.53, b=1.56 with --zr_a/--zr_b), so light and heavy rain both get room on the
scale; `none` maps the user's --value_range LO,HI linearly. The transform is part of the training config (stored in
every checkpoint), so evaluate.py and predict.py give predictions back in the user's units, and the nowcasting scores
threshold rain rates in mm/h (dBZ converted by the same Z-R relation). NaN (no data) stays NaN both ways.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TRANSFORMS = ("auto", "dbz", "rainrate", "none")
DBZ_RANGE = (-10.0, 60.0)  # HKO-7's pixel = 255 * (dBZ + 10) / 70
MARSHALL_PALMER = (200.0, 1.6)
HKO7_ZR = (58.53, 1.56)
# The `units` attributes read as each transform (CF spells mm/h "mm h-1"; archives write all of these).
UNIT_NAMES = {"dbz": ("dbz",), "rainrate": ("mm/h", "mm h-1", "mm hr-1", "mm/hr", "mm h**-1", "mm.h-1", "mmh-1",
                                            "mm per hour")}
LABELS = {"dbz": "dBZ", "rainrate": "mm/h"}


class UnitsError(ValueError):
    """Units that cannot be converted as asked; the message names the value."""


def parse_range(text):
    """"0,100" -> (0.0, 100.0); None stays None."""
    if text is None:
        return None
    try:
        low, high = (float(part) for part in str(text).split(","))
    except ValueError:
        raise UnitsError(f"--value_range {text!r}: expected LO,HI such as 0,100") from None
    if not low < high:
        raise UnitsError(f"--value_range {text!r}: LO must be below HI")
    return low, high


def resolve_transform(transform, units_attr, where):
    """The transform (dbz, rainrate or none) for data whose `units` attribute is `units_attr` (None: absent)."""
    found = next((kind for kind, names in UNIT_NAMES.items()
                  if units_attr is not None and units_attr.strip().lower() in names), None)
    if transform == "auto":
        if found is None:
            said = f"units {units_attr!r}" if units_attr is not None else "no units attribute"
            raise UnitsError(f"{where} has {said}, which --transform auto cannot convert: pass --transform dbz, "
                             f"rainrate, or none with --value_range LO,HI")
        return found
    if transform in ("dbz", "rainrate") and found is not None and found != transform:
        raise UnitsError(f"--transform {transform} but {where} is in {units_attr!r} ({LABELS[found]})")
    return transform


@dataclass(frozen=True)
class Units:
    """How values of one kind (dbz, rainrate, none) map to the models' [0, 1] and back."""
    kind: str
    zr_a: float = MARSHALL_PALMER[0]
    zr_b: float = MARSHALL_PALMER[1]
    value_range: tuple | None = None  # none: (LO, HI) of the user's values

    def __post_init__(self):
        if self.kind not in TRANSFORMS[1:]:
            raise UnitsError(f"--transform {self.kind!r}: expected one of {', '.join(TRANSFORMS)}")
        if not (self.zr_a > 0 and self.zr_b > 0):
            raise UnitsError(f"--zr_a {self.zr_a} --zr_b {self.zr_b}: both must be positive")
        if self.kind == "none" and self.value_range is None:
            raise UnitsError("--transform none needs --value_range LO,HI (the values that map to 0 and 1)")

    @classmethod
    def from_config(cls, config: dict):
        """The Units of a train.py config (a dict; its transform as resolved when the data opened), or None for data
        read as they are (frames in [0, 1])."""
        kind = config.get("transform")
        if kind in (None, "auto"):
            return None
        return cls(kind, float(config.get("zr_a", MARSHALL_PALMER[0])), float(config.get("zr_b", MARSHALL_PALMER[1])),
                   parse_range(config.get("value_range")))

    @property
    def name(self) -> str:
        return LABELS.get(self.kind, "value")

    def to_unit(self, values: torch.Tensor) -> torch.Tensor:
        """User values -> float32 in [0, 1] (clipped), NaN kept."""
        values = values.float()
        if self.kind == "rainrate":
            values = self.dbz_of_rain(values)
        low, high = DBZ_RANGE if self.kind != "none" else self.value_range
        return ((values - low) / (high - low)).clamp(0, 1)  # (clamp keeps NaN)

    def from_unit(self, scaled: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> the user's values (OpenSTL's unbounded outputs clipped to [0, 1] first)."""
        scaled = scaled.float().clamp(0, 1)
        low, high = DBZ_RANGE if self.kind != "none" else self.value_range
        values = low + scaled * (high - low)
        return self.rain_of_dbz(values, dry_at=scaled <= 0) if self.kind == "rainrate" else values

    def scored(self, scaled: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> the values thresholds and pictures are in: mm/h for dBZ and mm/h data, the user's own for none."""
        values = self.from_unit(scaled)
        return values if self.kind == "none" else self.rain_rate(values)

    def rain_rate(self, values: torch.Tensor) -> torch.Tensor:
        """The user's values in mm/h, for thresholds in mm/h: dBZ through the Z-R relation."""
        if self.kind == "rainrate":
            return values
        if self.kind == "dbz":
            return self.rain_of_dbz(values, dry_at=values <= DBZ_RANGE[0])
        raise UnitsError("--transform none: the values have no rain rate; give --thresholds in their units")

    def dbz_of_rain(self, rain: torch.Tensor) -> torch.Tensor:
        """dBZ = 10 log10(a R^b); no rain is -inf dBZ (scaled to 0)."""
        return 10 * torch.log10(torch.as_tensor(self.zr_a)) + 10 * self.zr_b * torch.log10(rain)

    def rain_of_dbz(self, dbz: torch.Tensor, dry_at: torch.Tensor) -> torch.Tensor:
        """R = (10^(dBZ/10) / a)^(1/b), 0 where `dry_at` (the bottom of the scale)."""
        rain = (torch.pow(10.0, dbz / 10) / self.zr_a).pow(1 / self.zr_b)
        return torch.where(dry_at, torch.zeros_like(rain), rain)
