"""The descriptor pool every LMaaS message registers in (see ``generate.py``)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
