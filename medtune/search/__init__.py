"""Which balance of languages to train on: short proxy runs at several shares, a fitted response, a recommendation.

    python -m medtune.search search=ratio_ja                           # medtune/conf/search/ratio_ja.yaml
    python -m medtune.search search=ratio_ja search.confirm=true       # and one full run at the recommended shares

plan.py (the runs), scores.py (their paired changes from base), fit.py (response and recommendation), write.py
(search.md, search.png), run.py (the whole search). Nothing imports this package.
"""
