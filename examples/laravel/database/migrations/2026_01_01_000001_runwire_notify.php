<?php

use Illuminate\Database\Migrations\Migration;
use Illuminate\Support\Facades\DB;

// runwire's integration point, applied with the app's own migrations: `version` columns and
// the triggers that NOTIFY runwire. It creates no tables and is safe to run again. (In your
// app, copy runwire's migrations/20260101000001_runwire_notify.sql next to this file.)
return new class extends Migration
{
    public function up()
    {
        DB::unprepared(file_get_contents(config('services.runwire.migrations').'/20260101000001_runwire_notify.sql'));
    }
};
