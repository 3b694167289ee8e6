"""tryfleet: throwaway micro-VMs for the try-until-it-works loops of AI-agent fleets."""

__version__ = "0.1.0"
__all__ = ["__version__"]
