"""`domaintune monitor`: what production traffic (the `serve --store` database) says about the model.

`drift` compares windows of live prompts with the training data (`data.drift`); more to come
(shadow agreement, the feedback flywheel: issue 15).
"""
