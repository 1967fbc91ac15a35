"""Built-in positional schemes: learned, sinusoidal, rotary, ALiBi and none."""

from zoo import hookimpl
from zoo.plugins.positional.alibi import ALiBi
from zoo.plugins.positional.learned import LearnedPositions
from zoo.plugins.positional.none import NoPositions
from zoo.plugins.positional.rotary import RotaryPositions
from zoo.plugins.positional.sinusoidal import SinusoidalPositions


@hookimpl
def zoo_register_components(registry):
    registry.add("positional", "learned", LearnedPositions)
    registry.add("positional", "sinusoidal", SinusoidalPositions)
    registry.add("positional", "rotary", RotaryPositions)
    registry.add("positional", "alibi", ALiBi)
    registry.add("positional", "none", NoPositions)
