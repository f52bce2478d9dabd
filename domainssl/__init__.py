"""domainssl: domain-adapted self-supervised learning for EO, pathology and RGB-IR re-ID."""

from domainssl.errors import DomainSSLError

__version__ = "0.1.0"
__all__ = ["DomainSSLError", "__version__"]
