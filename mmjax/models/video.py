"""placeholder: filled in by the zoo work (issue 3)"""
