"""Options, recipes and resolved configs.

`config.schema` (the Option type and Config) imports nothing of the project, so every layer can
declare options with it; `config.catalogue` declares the encoder pairs' and heads' options without
their code; `config.options` gathers the schema, `config.recipes` reads the released
recipes (config/recipes/*.json), `config.parsers` builds the command lines and `config.resolve`
turns a command line into the saved training config. Import the submodules directly.
"""
