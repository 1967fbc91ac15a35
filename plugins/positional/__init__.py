"""Built-in positional schemes: learned, sinusoidal, rotary, ALiBi and none."""

from zoo import hookimpl
from zoo.plugins.positional.alibi import ALiBi
from zoo.plugins.positional.learned import LearnedPositions
from zoo.plugins.positional.none import NoPositions
from zoo.plugins.positional.rotary import RotaryPositions
from zoo.plugins.positional.sinusoidal import SinusoidalPositions


SCHEMES = {"learned": LearnedPositions, "sinusoidal": SinusoidalPositions, "rotary": RotaryPositions,
           "alibi": ALiBi, "none": NoPositions}


@hookimpl
def zoo_register_components(registry):
    for name, scheme in SCHEMES.items():
        registry.add("positional", name, scheme)
