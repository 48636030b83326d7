"""The wire contract: what a partner or an encounter system reads and writes.

Field types and template rules, the message models of every kind (queries and encounter
results, notices, on-call operations), the msgpack codec and its envelope, the closed list
of reason codes, the names of exchanges and queues, and the schemas generated from them
(docs/architecture.md, "Packages"). Nothing here loads numpy, FAISS or pika: an
integrator's code and the schema tools import it alone.
"""
