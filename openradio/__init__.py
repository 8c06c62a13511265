"""openradio: an open implementation of NVIDIA's RADIOv2.5 vision foundation models."""
from openradio.model.radio import RADIOModel, RadioOutput, Resolution
from openradio.loader import radio_model
from openradio import versions

__all__ = ["radio_model", "RADIOModel", "RadioOutput", "Resolution", "versions"]
__version__ = "0.1.0"
