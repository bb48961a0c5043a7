<?php

namespace Runwire\Laravel;

use Illuminate\Database\ConnectionInterface;
use InvalidArgumentException;

/**
 * runwire's integration in the host's database, installed with the app's migrations the way
 * `runwire migrate` installs it: one change source's integration, the other removed, in one
 * transaction. `wal` is a publication of the seven tables and nothing on them (needs
 * `wal_level = logical`, and REPLICATION for runwire's role); `notify` is triggers, `version`
 * columns and a schema `runwire` (works everywhere, but serialises the host's commits);
 * `auto` takes `wal` where the server has `wal_level = logical`, as runwire does. The SQL is
 * runwire's own (resources/sql is a verbatim copy of its migrations/, which the package's
 * tests check). Every file is idempotent, so installing again replaces an older version.
 *
 * It creates none of the host's tables and must not touch their rows.
 */
final class Integration
{
    /** Installs what `$changes` (auto, wal, notify) needs; returns the source installed. */
    public static function install(ConnectionInterface $db, string $changes = 'auto'): string
    {
        if (! in_array($changes, ['auto', 'wal', 'notify'], true)) {
            throw new InvalidArgumentException("runwire.changes is auto, wal or notify, not '{$changes}'");
        }

        return $db->transaction(function () use ($db, $changes) {
            // Deploys that migrate in parallel (and runwire migrate itself) take turns.
            $db->statement("SELECT pg_advisory_xact_lock(hashtext('runwire migrate'))");
            $source = $changes !== 'auto' ? $changes
                : ($db->selectOne('SHOW wal_level')->wal_level === 'logical' ? 'wal' : 'notify');
            [$install, $remove] = $source === 'wal' ? ['wal', 'remove_notify'] : ['notify', 'remove_wal'];
            $db->unprepared(self::sql($install));
            $db->unprepared(self::sql($remove));

            return $source;
        });
    }

    /** One of runwire's integration files. */
    public static function sql(string $name): string
    {
        return file_get_contents(__DIR__.'/../resources/sql/'.$name.'.sql');
    }
}
