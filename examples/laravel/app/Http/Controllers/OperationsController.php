<?php

namespace App\Http\Controllers;

use App\Livewire\ReviewPackCard;
use App\Livewire\RunViewer;
use App\LivewireStandIn\Runtime;
use Illuminate\Http\Request;
use Illuminate\Support\Facades\DB;

/** The two pages that used to poll: a run's viewer and a tenant with its review-pack card. */
class OperationsController
{
    public function run(Request $request, int $run)
    {
        $run = DB::table('operation_runs')->find($run);
        abort_unless($run && $this->member($request, $run->workspace_id), 404);

        return view('runs.show', ['run' => $run]);
    }

    public function tenant(Request $request, int $tenant)
    {
        $tenant = DB::table('tenants')->find($tenant);
        abort_unless($tenant && $this->member($request, $tenant->workspace_id), 404);
        $pack = DB::table('review_packs')->where('tenant_id', $tenant->id)
            ->orderByDesc('created_at')->orderByDesc('id')->first();

        return view('tenants.show', ['tenant' => $tenant, 'pack' => $pack]);
    }

    /** The run viewer as a Livewire component (refreshed by runwire, see App\Livewire\RunViewer). */
    public function liveRun(Request $request, int $run)
    {
        $row = DB::table('operation_runs')->find($run);
        abort_unless($row && $this->member($request, $row->workspace_id), 404);

        return view('live', ['title' => 'Run #'.$run, 'component' => Runtime::mount(RunViewer::class, ['run' => $run])]);
    }

    /** The review-pack card as a Livewire component (App\Livewire\ReviewPackCard). */
    public function liveTenant(Request $request, int $tenant)
    {
        $row = DB::table('tenants')->find($tenant);
        abort_unless($row && $this->member($request, $row->workspace_id), 404);

        return view('live', ['title' => $row->name, 'component' => Runtime::mount(ReviewPackCard::class, ['tenant' => $tenant])]);
    }

    /** The "Generate review pack" action: the app writes the row; runwire streams the rest. */
    public function generatePack(Request $request, int $tenant)
    {
        $tenant = DB::table('tenants')->find($tenant);
        abort_unless($tenant && $this->member($request, $tenant->workspace_id), 404);
        $id = DB::table('review_packs')->insertGetId([
            'workspace_id' => $tenant->workspace_id,
            'tenant_id' => $tenant->id,
            'status' => 'queued',
        ]);

        return response()->json(['id' => $id], 201);
    }

    public static function isMember(int $user, int $workspace): bool
    {
        return DB::table('workspace_memberships')->where(['workspace_id' => $workspace, 'user_id' => $user])->exists();
    }

    private function member(Request $request, int $workspace): bool
    {
        return self::isMember($request->user()->id, $workspace);
    }
}
