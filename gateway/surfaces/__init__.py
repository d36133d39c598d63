"""The API surfaces clients call besides chat completions, each a route plus pure
translators on the same pipeline (model listing needs neither hold nor meter)."""
