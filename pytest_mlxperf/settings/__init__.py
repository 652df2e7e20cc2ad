"""Every setting's one definition (the option table) and its resolution into ``Settings``: marker >
command line > environment > ini."""
