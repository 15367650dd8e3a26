"""Data preparation: Crawler.py downloads illustrations, CutImage.py crops their faces to 96x96.

Both are scripts (`python Pretreatment/Crawler.py --help`) that tests also import.
"""
