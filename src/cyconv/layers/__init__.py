"""The layers: functional.py (each kernel as a stateless function, NumPy in and out, validated), nn.py (the
modules that hold parameters and call it), graph.py (a model as one graph of named values, with its
fusions) and models.py (the networks built from them)."""
