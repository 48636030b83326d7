"""The query domain: how a provider words its answer (§6-9), the consolidated result an
encounter system receives, enrolment into the gallery, and the examiners' side of review
(docs/architecture.md, "Packages"). Plain functions over a session: no broker, no FAISS.
"""
