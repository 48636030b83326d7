"""The documents in ``schemas/``, generated from the wire models and the route table: JSON
Schema per message kind, the reason codes, the routing table and ``asyncapi.yaml``
(docs/architecture.md, "Packages"). They stand above the route table, which the wire
contract does not know.
"""
