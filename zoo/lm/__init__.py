"""Language modelling: training decoders on text."""
