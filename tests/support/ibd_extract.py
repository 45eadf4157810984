"""Extract every file of an encrypted backup with iphone_backup_decrypt.

usage: ibd_extract.py BACKUP_DIR PASSWORD OUT_DIR
Writes OUT_DIR/<Domain>/<relativePath>; exit 3 on a wrong password.
"""
import sys

from iphone_backup_decrypt import EncryptedBackup

backup, password, out = sys.argv[1:4]
try:
    b = EncryptedBackup(backup_directory=backup, passphrase=password)
    b.test_decryption()
except Exception as e:  # the library raises ValueError/RuntimeError variants by version
    print(f"decryption failed: {e}", file=sys.stderr)
    sys.exit(3)
n = b.extract_files(relative_paths_like="%", domain_like="%", output_folder=out, preserve_folders=True, domain_subfolders=True)
print(f"extracted {n}")
