"""Blind battle votes: the battle token, the vote store, the vote book and the ratings."""
