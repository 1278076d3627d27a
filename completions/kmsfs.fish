# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_kmsfs_global_optspecs
    string join \n h/help V/version
end

function __fish_kmsfs_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_kmsfs_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_kmsfs_using_subcommand
    set -l cmd (__fish_kmsfs_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c kmsfs -n "__fish_kmsfs_needs_command" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -s V -l version -d 'Print version'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "init" -d 'Make DIR a new vault (creating it if needed) and record its key on this host'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "mount" -d 'Mount a vault at MOUNTPOINT (in the background unless -f)'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "unmount" -d 'Unmount a kmsfs mount: flush, zeroize every cached key, wait for the daemon to exit'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "status" -d 'Show a running mount\'s key, key cache and counters (without MOUNTPOINT: every kmsfs mount of this host)'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "forget" -d 'Zeroize every cached key of a running mount (and its page cache) without unmounting'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "rewrap" -d 'Move every file\'s wrapped data key (and the name key) to a new wrapping key, in place, without re-encrypting data; resumes after an interruption'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "rekey" -d 'Re-encrypt files of an unmounted vault under fresh data keys and file ids (after a data key leaked), crash-safe and resumable'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "fsck" -d 'Verify every header, block, name and link target of an unmounted vault; report damage'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "cat" -d 'Decrypt one file to stdout without mounting'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "audit" -d 'Show who used which file\'s key, from CloudTrail\'s KMS events: one line per event with the file\'s current plain path (needs the config and name keys only, no data key)'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout'
complete -c kmsfs -n "__fish_kmsfs_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand init" -l key-file -d 'Local provider: the master key file (kept outside the vault, a regular file of yours, mode 0600). `init` creates it when missing. Default for init: ~/.config/kmsfs/keys/VOLUME_ID.key' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand init" -l kms-key-id -d 'AWS KMS provider: the wrapping key (ARN, key id or alias/NAME), reached through the standard AWS environment (region, credentials, AWS_ENDPOINT_URL_KMS)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand init" -l block-size -d 'Plaintext bytes per encrypted block (a power of two, 512 to 1048576)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand init" -l force -d 'Make the vault in a directory that already holds files (they stay as they are, unencrypted, and fsck reports them as damaged)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand init" -l plaintext-names -d 'Keep file names readable in the backing directory (contents stay encrypted)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand init" -l bucket-key -d 'AWS KMS only: wrap file keys with one KMS-wrapped volume key (~99 % fewer KMS calls; the KMS audit log then names the volume, not each file)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand init" -l replicated -d 'The backing store will be replicated to another region (disaster recovery): warn if the key could not open the copy there (a single-Region KMS key). Not recorded'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand init" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l key-file -d 'Local provider: the master key file (kept outside the vault, a regular file of yours, mode 0600). `init` creates it when missing. Default for init: ~/.config/kmsfs/keys/VOLUME_ID.key' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l kms-key-id -d 'AWS KMS provider: the wrapping key (ARN, key id or alias/NAME), reached through the standard AWS environment (region, credentials, AWS_ENDPOINT_URL_KMS)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l volume-id -d 'The vault\'s volume id (32 hex digits; kmsfs init prints it, kmsfs status shows it). Needed with --key-file or --kms-key-id on a host that has not used this volume before, and to accept a vault config that changed since this host used it (a kmsfs rewrap on another host) or a vault path that now holds another volume' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l key-ttl -d 'Seconds an unwrapped data key stays cached, counted from the unwrap (0: only while the file is open)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l key-cache-size -d 'Most data keys cached at once (least recently used go first, zeroized)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l key-pool-size -d 'AWS KMS: fresh data keys kept ready for new files (0: generate on first write)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l host-id -d 'This host\'s name for the per-host mount lock (default: /etc/machine-id, else hostname)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l attr-ttl -d 'Seconds the kernel may cache attributes, names and directory listings. Default: 30 where only this host writes the vault (every change goes through this mount, which keeps the kernel in step), 1 on a network or FUSE store; 0 for vaults that other hosts change too: every stat and open then asks the backing store' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l threads -d 'FUSE worker threads' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l fd-cache -d 'Most descriptors kept open for files and directories the kernel knows but no handle has open; others are reopened by name on use (default: a quarter of the open-file limit, from 64 to 16384)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l readahead -d 'Kernel readahead of the mount in KiB (set through sysfs; needs root, else the kernel\'s 128 KiB stays). Large reads keep several FUSE requests, and both cores, busy' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l spare-files -d 'Empty backing files made ahead so a create is a rename, not an inode allocation (0: off, e.g. when a sync tool watches the vault and should not see them come and go)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l log-file -d 'Log to this file (default: stderr with -f, else syslog)' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l log-level -d 'Log filter, e.g. info, debug, kmsfs=trace (RUST_LOG wins when set)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l fsname -d 'The name the mount table shows as the mount\'s source (default: the vault\'s path)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l flags -d 'Generic mount flags, as mount(8) takes them: noatime, nodiratime, strictatime, noexec, sync, dirsync; dev and suid (root only: the default is nodev,nosuid)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -s f -l foreground -d 'Stay in the foreground and log to stderr'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l read-only -d 'Mount read-only'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l nonempty -d 'Mount even onto a directory that holds files (they are hidden until unmount) or onto another mount'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l allow-other -d 'Let other users use the mount (access follows the backing files\' owners and modes)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -l writeback-cache -d 'Let the kernel hold written data in its page cache and send it in large writes later (FUSE writeback cache): small and unaligned writes (sqlite, tar) are faster, but data not yet fsynced is lost if the daemon is killed, as on a local file system when the machine crashes. Refused on a network or FUSE store (other hosts would not see it)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand mount" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand unmount" -l wait -d 'While programs still use the mount (a shell in it, a detached `git gc`), wait this many seconds for them to finish before giving up (0: do not wait)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand unmount" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand status" -l json -d 'Print JSON (fields: provider, key_id, key_region, vault_key_id, vault_key_region, multi_region_replica, ttl_s, cache_entries, cache_capacity, hits, misses, kms_calls, kms_errors, tamper_events, oldest_key_made, open_files, inodes_known, fds_held, fds_open, fd_cache_limit, rss_kib, uptime_s, pid, ...)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand status" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand forget" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rewrap" -l key-file -d 'Local provider: the master key file (kept outside the vault, a regular file of yours, mode 0600). `init` creates it when missing. Default for init: ~/.config/kmsfs/keys/VOLUME_ID.key' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rewrap" -l kms-key-id -d 'AWS KMS provider: the wrapping key (ARN, key id or alias/NAME), reached through the standard AWS environment (region, credentials, AWS_ENDPOINT_URL_KMS)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rewrap" -l volume-id -d 'The vault\'s volume id (32 hex digits; kmsfs init prints it, kmsfs status shows it). Needed with --key-file or --kms-key-id on a host that has not used this volume before, and to accept a vault config that changed since this host used it (a kmsfs rewrap on another host) or a vault path that now holds another volume' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rewrap" -l to-kms-key-id -d 'Move to this AWS KMS key (ARN, key id or alias/NAME); KMS ReEncrypt when the current key is a KMS key in the same region' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rewrap" -l to-key-file -d 'Move to this local master key file (created, mode 0600, when it does not exist)' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rewrap" -s j -l jobs -d 'Files rewrapped in parallel (KMS calls overlap)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rewrap" -l host-id -d 'This host\'s name for the per-host mount lock (default: /etc/machine-id, else hostname)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rewrap" -l dry-run -d 'Only report what would change; write nothing'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rewrap" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rekey" -l key-file -d 'Local provider: the master key file (kept outside the vault, a regular file of yours, mode 0600). `init` creates it when missing. Default for init: ~/.config/kmsfs/keys/VOLUME_ID.key' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rekey" -l kms-key-id -d 'AWS KMS provider: the wrapping key (ARN, key id or alias/NAME), reached through the standard AWS environment (region, credentials, AWS_ENDPOINT_URL_KMS)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rekey" -l volume-id -d 'The vault\'s volume id (32 hex digits; kmsfs init prints it, kmsfs status shows it). Needed with --key-file or --kms-key-id on a host that has not used this volume before, and to accept a vault config that changed since this host used it (a kmsfs rewrap on another host) or a vault path that now holds another volume' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rekey" -l path -d 'Only files at or under this plain path (relative to the vault root, e.g. finance/q3)' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rekey" -l older-than -d 'Only files whose data key was made more than DAYS days ago (and files of format-2 vaults, whose key age is unknown)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rekey" -s j -l jobs -d 'Files re-encrypted in parallel' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rekey" -l host-id -d 'This host\'s name for the per-host mount lock (default: /etc/machine-id, else hostname)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rekey" -l dry-run -d 'Only list the files that would be rekeyed; write nothing, unwrap no data key'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand rekey" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand fsck" -l key-file -d 'Local provider: the master key file (kept outside the vault, a regular file of yours, mode 0600). `init` creates it when missing. Default for init: ~/.config/kmsfs/keys/VOLUME_ID.key' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand fsck" -l kms-key-id -d 'AWS KMS provider: the wrapping key (ARN, key id or alias/NAME), reached through the standard AWS environment (region, credentials, AWS_ENDPOINT_URL_KMS)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand fsck" -l volume-id -d 'The vault\'s volume id (32 hex digits; kmsfs init prints it, kmsfs status shows it). Needed with --key-file or --kms-key-id on a host that has not used this volume before, and to accept a vault config that changed since this host used it (a kmsfs rewrap on another host) or a vault path that now holds another volume' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand fsck" -s j -l jobs -d 'Files checked in parallel' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand fsck" -l host-id -d 'This host\'s name for the per-host mount lock (default: /etc/machine-id, else hostname)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand fsck" -l repair-headerless -d 'Empty (truncate to 0 bytes) files that hold a header of this vault but no complete block: they hold no data and then read as empty files'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand fsck" -l repair-orphans -d 'Remove hole maps (`.kmsfs/holes/`) whose file no longer exists (a crash between a file\'s deletion and its map\'s)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand fsck" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand cat" -l key-file -d 'Local provider: the master key file (kept outside the vault, a regular file of yours, mode 0600). `init` creates it when missing. Default for init: ~/.config/kmsfs/keys/VOLUME_ID.key' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand cat" -l kms-key-id -d 'AWS KMS provider: the wrapping key (ARN, key id or alias/NAME), reached through the standard AWS environment (region, credentials, AWS_ENDPOINT_URL_KMS)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand cat" -l volume-id -d 'The vault\'s volume id (32 hex digits; kmsfs init prints it, kmsfs status shows it). Needed with --key-file or --kms-key-id on a host that has not used this volume before, and to accept a vault config that changed since this host used it (a kmsfs rewrap on another host) or a vault path that now holds another volume' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand cat" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -l key-file -d 'Local provider: the master key file (kept outside the vault, a regular file of yours, mode 0600). `init` creates it when missing. Default for init: ~/.config/kmsfs/keys/VOLUME_ID.key' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -l kms-key-id -d 'AWS KMS provider: the wrapping key (ARN, key id or alias/NAME), reached through the standard AWS environment (region, credentials, AWS_ENDPOINT_URL_KMS)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -l volume-id -d 'The vault\'s volume id (32 hex digits; kmsfs init prints it, kmsfs status shows it). Needed with --key-file or --kms-key-id on a host that has not used this volume before, and to accept a vault config that changed since this host used it (a kmsfs rewrap on another host) or a vault path that now holds another volume' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -l cloudtrail -d 'CloudTrail log files (.json or .json.gz, as the trail delivers them to S3) or directories holding them, searched recursively (symbolic links inside not followed)' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -l path -d 'Only events about files at or under this plain path (whole components: "finance" matches /finance/q3/x, not /financed); events naming no file are left out' -r -F
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -l principal -d 'Only events whose principal (userIdentity.arn) contains this text' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -l since -d 'Only events at or after this time (RFC 3339 as CloudTrail writes it, 2026-12-01T16:30:00Z, or a date: its midnight UTC)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -l until -d 'Only events at or before this time (RFC 3339, or a date: up to the end of that day)' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -s j -l jobs -d 'Log files read, and file headers indexed, in parallel' -r
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -l json -d 'Print JSON Lines, one object per event (type, time, principal, operation, result, region, source_ip, key_arn, file_id, path, path_status, bucket_key_mode)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand audit" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand completions" -s h -l help -d 'Print help'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "init" -d 'Make DIR a new vault (creating it if needed) and record its key on this host'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "mount" -d 'Mount a vault at MOUNTPOINT (in the background unless -f)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "unmount" -d 'Unmount a kmsfs mount: flush, zeroize every cached key, wait for the daemon to exit'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "status" -d 'Show a running mount\'s key, key cache and counters (without MOUNTPOINT: every kmsfs mount of this host)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "forget" -d 'Zeroize every cached key of a running mount (and its page cache) without unmounting'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "rewrap" -d 'Move every file\'s wrapped data key (and the name key) to a new wrapping key, in place, without re-encrypting data; resumes after an interruption'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "rekey" -d 'Re-encrypt files of an unmounted vault under fresh data keys and file ids (after a data key leaked), crash-safe and resumable'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "fsck" -d 'Verify every header, block, name and link target of an unmounted vault; report damage'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "cat" -d 'Decrypt one file to stdout without mounting'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "audit" -d 'Show who used which file\'s key, from CloudTrail\'s KMS events: one line per event with the file\'s current plain path (needs the config and name keys only, no data key)'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout'
complete -c kmsfs -n "__fish_kmsfs_using_subcommand help; and not __fish_seen_subcommand_from init mount unmount status forget rewrap rekey fsck cat audit completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
