"""The one recorded pass: a forward with attention interception and a backward from the score."""
