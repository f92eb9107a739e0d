"""The persistent archive index's pure rules: when a stored hour listing stands
(`listing_stamp`), which hours keep their names in memory (`hot_hours`), and the
file format (`schema`)."""
